//! The planner binary refuses bad settings with a message naming the problem, before it
//! opens its log or connects anywhere.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the planner with `args`; one that accepted them and started serving is killed after
/// a few seconds (and counts as not refused), so a missing check fails instead of hanging.
fn planner(args: &[&str]) -> (bool, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-planner"))
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break !status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    (refused, err)
}

#[test]
fn a_built_in_worker_without_slots_is_refused() {
    let (refused, err) = planner(&["--builtin-slots", "0"]);
    assert!(refused, "{err}");
    assert!(err.contains("--builtin-slots"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_and_its_public_line_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("signing.key");
    let keygen = || {
        Command::new(env!("CARGO_BIN_EXE_shoal-planner"))
            .arg("keygen")
            .arg("--out")
            .arg(&key)
            .output()
            .expect("runs")
    };
    let made = keygen();
    assert!(made.status.success(), "{made:?}");
    let mode = std::fs::metadata(&key)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let public = std::fs::read_to_string(dir.path().join("signing.key.pub")).expect("written");
    assert!(public.starts_with("ed25519 "), "{public}");
    let again = keygen();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
}

#[test]
fn a_signing_key_others_can_read_is_refused_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("signing.key");
    let made = Command::new(env!("CARGO_BIN_EXE_shoal-planner"))
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .expect("runs");
    assert!(made.status.success(), "{made:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = key.display().to_string();
    let (refused, err) = planner(&["--signing-key", &path]);
    assert!(refused);
    assert!(err.contains("chmod 600"), "{err}");
}
