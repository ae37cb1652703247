//! The `shoal` command without a planner: clear errors, never a panic.

use std::process::Command;

fn shoal(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn an_unreachable_planner_is_named_with_what_to_do() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let (ok, out) = shoal(&["--api", &api, "workers"]);
    assert!(!ok);
    assert!(
        out.contains("cannot reach the planner") && out.contains("SHOAL_API"),
        "{out}"
    );
}

#[test]
fn a_missing_or_invalid_deployment_file_is_named() {
    let (ok, out) = shoal(&["deploy", "/nonexistent/deploy.toml"]);
    assert!(
        !ok && out.contains("cannot read /nonexistent/deploy.toml"),
        "{out}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "project = ").expect("write");
    let (ok, out) = shoal(&["deploy", file.to_str().expect("utf-8")]);
    assert!(!ok && out.contains("is not valid TOML"), "{out}");
}
