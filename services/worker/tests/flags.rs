//! The worker binary refuses bad settings with a message naming the problem, before it
//! connects anywhere.

use std::process::Command;

fn worker(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-worker"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unsafe_pool_name_is_refused_with_the_reason() {
    let (ok, err) = worker(&["--pool", "eu.west"]);
    assert!(!ok);
    assert!(err.contains("pool name \"eu.west\" contains '.'"), "{err}");
}

#[test]
fn zero_slots_are_refused() {
    let (ok, err) = worker(&["--slots", "0"]);
    assert!(!ok);
    assert!(err.contains("--slots"), "{err}");
}

#[test]
fn an_invalid_worker_name_is_refused() {
    let (ok, err) = worker(&["--name", "Worker 1"]);
    assert!(!ok);
    assert!(err.contains("worker name \"Worker 1\""), "{err}");
}
