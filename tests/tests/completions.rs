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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patron-client.bash");
    std::fs::write(&path, script).unwrap();
    // `set -e` plus a clean stderr: loading must not fail or warn. The completion function
    // is the one the script registers for patron-client.
    let complete = |words: &str| {
        let program = format!(
            "set -e; source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             function=$(complete -p patron-client | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
             \"$function\" patron-client \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(program);
        let out = run(cmd).expect_code(0);
        assert_eq!(out.stderr, "", "bash complained");
        out.stdout
    };
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
    ] {
        assert!(
            commands.lines().any(|l| l == command),
            "{command} missing: {commands}"
        );
    }
    let options = complete("patron-client add --ov");
    assert_eq!(options.trim(), "--overwrite");
    let nested = complete("patron-client broker ''");
    for command in ["start", "stop", "status"] {
        assert!(
            nested.lines().any(|l| l == command),
            "{command} missing: {nested}"
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
