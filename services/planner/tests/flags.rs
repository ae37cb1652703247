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
