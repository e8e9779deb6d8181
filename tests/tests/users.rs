//! Only the broker's own user may use it.

use e2e::{run, Sandbox};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_patron_of_another_user_is_refused_with_a_clear_error() {
    if !e2e::have_root("running a patron as another user") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("owner");
    let _broker = sandbox.broker(&state, &[]);
    // Let the other user reach the state dir itself (the broker keeps its socket folder
    // owner-only, which is the point).
    let root = state.parent().unwrap();
    for dir in [root, state.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut as_nobody = Command::new("setpriv");
    sandbox.apply_env(&mut as_nobody);
    as_nobody
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(e2e::bin("patron-client"))
        .arg("--state-dir")
        .arg(&state)
        .arg("list");
    let out = run(as_nobody).expect_code(5);
    assert!(
        out.stderr.contains("belongs to another user"),
        "the refusal must say why: {}",
        out.stderr
    );
    // And it did not start a broker of its own on that state dir.
    assert_eq!(e2e::brokers_on(&state).len(), 1);
}
