//! The README's "Running it by hand" section, walked as written by
//! `tests/readme-walkthrough.sh` with the binaries just built, twice in a row: it fails when
//! the README and the binaries disagree. The script's header lists the conventions that
//! section keeps so that it can be walked (a free port where it says to pick one, `<ID>`,
//! `(exits N)`, …).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Both runs, with room for a loaded machine (one run takes a few seconds when idle).
const DEADLINE: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the walk-through on `readme` `runs` times; its exit success and its output.
fn walk(readme: &Path, runs: u32) -> anyhow::Result<(bool, String)> {
    let planner = shoal_cli::local::find_binary("shoal-planner")?;
    let bin_dir = planner
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", planner.display()))?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("walk.log");
    let mut child = Command::new("bash")
        .arg(repo().join("tests/readme-walkthrough.sh"))
        .env("README", readme)
        .env("RUNS", runs.to_string())
        .env("SHOAL_BIN_DIR", bin_dir)
        .env("WALK_TIMEOUT", "280")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("walk.err"))?)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            // SIGTERM: the script's trap stops every process the README started.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = std::fs::read_to_string(&log)?;
    out.push_str(&std::fs::read_to_string(dir.path().join("walk.err"))?);
    if status.is_none() {
        out.push_str(&format!(
            "\nwalk-through still running after {DEADLINE:?}: stopped"
        ));
    }
    let left = leftovers(&out);
    assert!(
        left.is_empty(),
        "processes of the walk-through outlived it: {left:?}\n{out}"
    );
    Ok((status.is_some_and(|s| s.success()), out))
}

/// Processes whose command line or working directory is inside the walk-through's
/// directory (which its output names), after it has ended.
fn leftovers(out: &str) -> Vec<String> {
    let Some(top) = out
        .lines()
        .filter(|l| l.starts_with("walk-through: run "))
        .find_map(|l| l.split_once(" in ").map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|run| run.rsplit_once('/').map(|(top, _)| top.to_owned()))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(path.join("cwd")).unwrap_or_default();
        if cmdline.contains(&top) || cwd.starts_with(&top) {
            found.push(format!("{}: {cmdline}", path.display()));
        }
    }
    found
}

#[test]
fn the_readme_walk_through_works_as_written_twice_in_a_row() -> anyhow::Result<()> {
    let (ok, out) = walk(&repo().join("README.md"), 2)?;
    assert!(ok, "the README's \"Running it by hand\" failed:\n{out}");
    assert!(out.contains("2 of 2 runs passed"), "{out}");
    Ok(())
}

#[test]
fn a_readme_that_disagrees_with_the_binaries_fails_the_walk_through() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let wrong = "shoal pool add eu-west";
    assert!(
        readme.contains(wrong),
        "the README no longer says `{wrong}`"
    );
    let line = readme
        .lines()
        .position(|l| l.contains(wrong))
        .map_or(0, |i| i + 1);
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("README.md");
    std::fs::write(
        &copy,
        readme.replacen(wrong, "shoal pool create eu-west", 1),
    )?;
    let (ok, out) = walk(&copy, 1)?;
    assert!(!ok, "a command the CLI does not know passed:\n{out}");
    assert!(
        out.contains(&format!("FAILED at README.md line {line} ")),
        "the failure names the README line:\n{out}"
    );
    Ok(())
}
