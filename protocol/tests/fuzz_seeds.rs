//! Runs each fuzz target's body over its committed seed corpus (`fuzz/corpus/<target>/`),
//! so stable CI exercises the fuzz entry points.

use std::path::PathBuf;

fn run(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        body(&data);
        // and every prefix, which covers truncated inputs
        for end in 0..data.len().min(512) {
            body(&data[..end]);
        }
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn package_seeds() {
    run("package", shaddock_protocol::fuzzing::package);
}

#[test]
fn message_seeds() {
    run("message", shaddock_protocol::fuzzing::message);
}

#[test]
fn handshake_seeds() {
    run("handshake", shaddock_protocol::fuzzing::handshake);
}
