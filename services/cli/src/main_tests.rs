//! The command line's definition: every argument explained, the checked values refused as
//! usage errors, and the global options accepted everywhere.

use super::*;

#[test]
fn the_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_subcommand_and_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(sub_path.clone());
            }
            walk(sub, &sub_path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "shoal", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:?}");
}

#[test]
fn api_without_a_scheme_means_http() {
    let cli = Cli::try_parse_from(["shoal", "--api", "127.0.0.1:9", "workers"]).expect("parses");
    assert_eq!(cli.api, "http://127.0.0.1:9");
    let e = Cli::try_parse_from(["shoal", "--api", "https://planner:8080", "workers"])
        .expect_err("no TLS");
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    assert!(e.to_string().contains("http://planner:8080"), "{e}");
}

#[test]
fn output_json_is_global() {
    let cli = Cli::try_parse_from(["shoal", "target", "list", "--output", "json"]).expect("parses");
    assert_eq!(cli.output, Output::Json);
    let cli = Cli::try_parse_from(["shoal", "-o", "json", "workers"]).expect("parses");
    assert_eq!(cli.output, Output::Json);
    assert!(Cli::try_parse_from(["shoal", "-o", "yaml", "workers"]).is_err());
}

#[test]
fn a_bogus_event_stream_is_a_usage_error_naming_the_forms() {
    let e = Cli::try_parse_from(["shoal", "events", "--stream", "bogus"]).expect_err("bogus");
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    assert_eq!(e.exit_code(), exit::USAGE);
    let text = e.to_string();
    assert!(
        text.contains("deployment/ID") && text.contains("target/NAME") && text.contains("rejected"),
        "{text}"
    );
    let cli = Cli::try_parse_from(["shoal", "events", "--stream", "deployment/0194a1b2"])
        .expect("a prefix");
    assert!(matches!(
        cli.command,
        Cmd::Events {
            stream: Some(input::Stream::Deployment(_)),
            ..
        }
    ));
}

#[test]
fn completions_are_offered_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let cli = Cli::try_parse_from(["shoal", "completions", shell]).expect("parses");
        let Cmd::Completions { shell } = cli.command else {
            panic!("not completions");
        };
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut script);
        let script = String::from_utf8_lossy(&script);
        assert!(
            script.contains("deployment") && script.contains("output"),
            "{script}"
        );
    }
}
