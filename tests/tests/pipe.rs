//! `patron-client pipe` driven by a real Python script (tests/python/pipe_session.py), as a
//! script in any language would drive it.

use e2e::{bin, run, sha256, Sandbox, Seeder};
use std::process::Command;

#[test]
fn a_python_script_downloads_through_pipe_mode_and_shuts_it_down() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/piped.bin", 400_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pipe_session.py");
    let mut python = Command::new("python3");
    sandbox.apply_env(&mut python);
    python
        .arg(script)
        .arg(bin("patron-client"))
        .arg(&state)
        .arg(&seeder.torrent)
        .arg(seeder.broker.peer())
        .arg(&out);
    let session = run(python);
    assert_eq!(session.code(), 0, "{}\n{}", session.stdout, session.stderr);
    assert_eq!(sha256(&out.join("piped.bin")), sha256(&data));
}
