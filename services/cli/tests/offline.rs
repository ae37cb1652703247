//! The `shoal` command without a planner: clear errors, never a panic.

use shoal_cli::client::ClientError;
use shoal_cli::ids::{self, IdError};
use shoal_cli::{colour, exit};
use shoal_shared::{DeploymentState, TaskId};
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

/// Runs `shoal` with `NO_COLOR` unset: (exit code, stdout, stderr).
fn shoal_code(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("SHOAL_API")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn api_without_a_scheme_is_http_and_unreachable_exits_6() {
    let port = closed_port();
    let (code, out, err) = shoal_code(&["--api", &format!("127.0.0.1:{port}"), "workers"]);
    assert_eq!(code, exit::UNREACHABLE, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&format!("http://127.0.0.1:{port}")), "{err}");
}

#[test]
fn api_with_another_scheme_is_explained() {
    let (code, _, err) = shoal_code(&["--api", "ftp://planner:8080", "workers"]);
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(
        err.contains("\"ftp://\"") && err.contains("http://HOST:PORT"),
        "{err}"
    );
    let (code, _, err) = shoal_code(&["--api", "https://planner:8080", "workers"]);
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(
        err.contains("TLS") && err.contains("http://planner:8080"),
        "{err}"
    );
}

#[test]
fn a_bogus_event_stream_is_a_usage_error_before_anything_is_sent() {
    let api = format!("127.0.0.1:{}", closed_port());
    let (code, out, err) = shoal_code(&["--api", &api, "events", "--stream", "bogus"]);
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(out.is_empty(), "{out}");
    for form in [
        "deployment/ID",
        "target/NAME",
        "pool/NAME",
        "worker/NAME",
        "rejected",
    ] {
        assert!(err.contains(form), "{form} missing: {err}");
    }
    let (code, _, err) = shoal_code(&["--api", &api, "events", "--stream", "pool/no such"]);
    assert_eq!(code, exit::USAGE, "{err}");
}

#[test]
fn refusals_before_sending_exit_7() {
    let api = format!("127.0.0.1:{}", closed_port());
    let (code, _, err) = shoal_code(&["--api", &api, "deployment", "show", "not-an-id!"]);
    assert_eq!(code, exit::REFUSED, "{err}");
    assert!(err.contains("is not a deployment id"), "{err}");
    let (code, _, err) = shoal_code(&["--api", &api, "pool", "add", "no such"]);
    assert_eq!(code, exit::REFUSED, "{err}");
    assert!(err.contains("name:"), "{err}");
}

#[test]
fn json_is_refused_where_only_text_is_printed() {
    let (code, out, err) = shoal_code(&["-o", "json", "deploy", "/nonexistent.toml"]);
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(
        out.is_empty() && err.contains("prints text only"),
        "{out}{err}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, mark) in [
        ("bash", "_shoal()"),
        ("zsh", "#compdef shoal"),
        ("fish", "complete -c shoal"),
    ] {
        let (code, out, err) = shoal_code(&["completions", shell]);
        assert_eq!(code, exit::OK, "{err}");
        assert!(out.contains(mark), "{shell}: {out}");
    }
    let (code, _, _) = shoal_code(&["completions", "tcsh"]);
    assert_eq!(code, exit::USAGE);
}

#[test]
fn errors_map_to_their_exit_codes() {
    let unreachable = ClientError::Unreachable {
        api: "http://x".into(),
        cause: "refused".into(),
    };
    let api = |status| ClientError::Api {
        status,
        message: "m".into(),
    };
    let cases: Vec<(anyhow::Error, i32)> = vec![
        (unreachable.into(), exit::UNREACHABLE),
        (api(404).into(), exit::REFUSED),
        (api(409).into(), exit::REFUSED),
        (api(500).into(), exit::PLANNER_FAILED),
        (api(503).into(), exit::PLANNER_FAILED),
        (
            anyhow::Error::from(api(400)).context("while doing something"),
            exit::REFUSED,
        ),
        (exit::Refused("no".into()).into(), exit::REFUSED),
        (
            ids::resolve::<&str>("task", "ab", &[], "d", String::new)
                .expect_err("unknown")
                .into(),
            exit::REFUSED,
        ),
        (anyhow::anyhow!("cannot read x"), exit::ERROR),
    ];
    for (e, code) in cases {
        assert_eq!(exit::code_of(&e), code, "{e:#}");
    }
    assert_eq!(exit::for_deployment(DeploymentState::Succeeded), exit::OK);
    assert_eq!(exit::for_deployment(DeploymentState::Failed), exit::FAILED);
    assert_eq!(
        exit::for_deployment(DeploymentState::Cancelled),
        exit::CANCELLED
    );
    assert_eq!(
        exit::for_deployment(DeploymentState::Running),
        exit::TIMED_OUT
    );
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    use std::ffi::OsStr;
    assert!(colour::enabled(true, None));
    assert!(!colour::enabled(false, None));
    assert!(!colour::enabled(true, Some(OsStr::new("1"))));
    assert!(!colour::enabled(true, Some(OsStr::new("false"))));
    // no-color.org: set to the empty string counts as unset.
    assert!(colour::enabled(true, Some(OsStr::new(""))));
    assert_eq!(colour::paint("failed", false), "failed");
    assert_eq!(colour::paint("failed", true), "\x1b[31mfailed\x1b[0m");
    assert_eq!(colour::paint("whatever", true), "whatever");
}

#[test]
fn a_prefix_names_the_one_id_it_starts() {
    let known = [
        "0194a1b2-3c4d-7000-8000-000000000001",
        "0194a1b2-3c4d-7000-8000-000000000002",
        "0194a1b9-0000-7000-8000-000000000003",
    ];
    let r = |w: &str| ids::resolve("deployment", w, &known, "the planner", || "hint".into());
    assert_eq!(r("0194a1b9"), Ok(known[2]));
    assert_eq!(r("0194A1B9"), Ok(known[2]), "any case");
    assert_eq!(
        r("0194a1b23c4d70008000000000000002"),
        Ok(known[1]),
        "hyphens optional"
    );
    assert_eq!(r(known[0]), Ok(known[0]), "the whole id");
    match r("0194a1b2") {
        Err(e @ IdError::Ambiguous { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(known[0]) && text.contains(known[1]) && !text.contains(known[2]),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    match r("0195") {
        Err(e @ IdError::Unknown { .. }) => {
            assert_eq!(e.to_string(), "the planner has no deployment 0195 (hint)");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r(""), Err(IdError::Malformed { .. })));
    assert!(ids::check_shape("deployment", "0194-a1").is_ok());
    assert!(ids::check_shape("deployment", "xyz").is_err());
}

#[test]
fn short_ids_tell_apart_ids_made_together() {
    // Made in one burst, as a deployment's tasks are: they share far more than 8 characters.
    let burst: Vec<String> = (0..50).map(|_| TaskId::new().to_string()).collect();
    let len = ids::short_len(&burst);
    assert!(len >= ids::MIN_SHORT);
    let mut shown: Vec<&str> = burst.iter().map(|id| ids::shorten(id, len)).collect();
    shown.sort_unstable();
    shown.dedup();
    assert_eq!(
        shown.len(),
        burst.len(),
        "short ids of length {len} collide"
    );
    for (id, short) in burst
        .iter()
        .zip(burst.iter().map(|id| ids::shorten(id, len)))
    {
        assert_eq!(
            ids::resolve("task", short, &burst, "d", String::new),
            Ok(id.as_str())
        );
    }
    // Apart in time (a deployment a minute later), 8 characters are enough.
    let apart = [
        "0194a1b2-3c4d-7000-8000-000000000001",
        "0194a1c9-0000-7000-8000-000000000003",
    ];
    assert_eq!(ids::short_len(&apart), 8);
}
