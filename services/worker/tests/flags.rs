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

#[test]
fn a_worker_without_trusted_keys_refuses_to_start_and_says_what_to_pass() {
    let (ok, err) = worker(&["--pool", "eu-west", "--nats-url", "nats://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("pass --trusted-keys FILE"), "{err}");
    assert!(err.contains("signing.key.pub"), "{err}");
}

#[test]
fn a_trusted_keys_file_that_holds_no_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("trusted");
    std::fs::write(&file, "# nothing yet\n").expect("written");
    let path = file.display().to_string();
    let (ok, err) = worker(&["--trusted-keys", &path, "--nats-url", "nats://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("hold no key"), "{err}");
}
