//! Shell integration: the completion scripts `patron-client completions SHELL` prints load in
//! their shell and complete what the CLI accepts.

use e2e::{bin, run};
use std::process::Command;

fn completions(shell: &str) -> String {
    let mut cmd = Command::new(bin("patron-client"));
    cmd.args(["completions", shell]);
    let out = run(cmd).expect_code(0);
    assert!(!out.stdout.is_empty(), "no {shell} script");
    out.stdout
}

#[test]
fn bash_completion_loads_and_completes_commands_and_options() {
    let script = completions("bash");
    let complete = |words: &str| e2e::bash_complete("patron-client", &script, words);
    let commands = complete("patron-client ''");
    for command in [
        "add",
        "close",
        "list",
        "status",
        "watch",
        "make",
        "broker",
        "completions",
        "pipe",
    ] {
        assert!(
            commands.iter().any(|c| c == command),
            "{command} missing: {commands:?}"
        );
    }
    assert_eq!(complete("patron-client add --ov"), ["--overwrite"]);
    let nested = complete("patron-client broker ''");
    for command in ["start", "stop", "status"] {
        assert!(
            nested.iter().any(|c| c == command),
            "{command} missing: {nested:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_are_generated_for_every_command() {
    for shell in ["zsh", "fish"] {
        let script = completions(shell);
        for command in ["add", "close", "watch", "make", "broker"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
}
