//! `cargo run --release -p shaddock-chat`: starts the distributed chat cluster and its web page.

fn main() {
    // The cluster is built issue by issue (protocol, rpc, connector, server, chat). Until the
    // chat servers exist, say so plainly instead of pretending to serve.
    eprintln!("shaddock-chat: the chat cluster is not implemented yet (see README.md, status)");
    std::process::exit(2);
}
