//! Runs the `rpc_frame` fuzz target's body over its committed seed corpus
//! (`fuzz/corpus/rpc_frame/seed-*`), so stable CI exercises the fuzz entry point.

#[test]
fn rpc_frame_fuzz_body_over_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rpc_frame");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/rpc_frame exists") {
        let path = entry.expect("readable corpus entry").path();
        let is_seed = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"));
        if !is_seed {
            continue;
        }
        let data = std::fs::read(&path).expect("readable seed");
        shaddock_rpc::frame::fuzz_decode(&data);
        ran += 1;
    }
    assert!(
        ran >= 5,
        "expected the committed seeds in {}, ran {ran}",
        dir.display()
    );
}
