//! A terminal chat client for pomelo's distributed chat (the pinus reference chat in
//! `benches/pinus-chat/`, or Shaddock's chat, which speaks the same routes).
//!
//! ```text
//! cargo run -p shaddock-client --example chat -- --gate 127.0.0.1:3014 --name bob --room lobby [--ws]
//! ```
//!
//! Type a line to send it to the room, `/to NAME text` for a private message, `/quit` (or
//! end of input) to leave. Pushes (`onChat`, `onAdd`, `onLeave`) are printed as they arrive.
//! `RUST_LOG=shaddock_client=debug` shows the client's logs.

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Event, Push, Transport, connect_via_gate};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(about = "Terminal chat client for the pomelo/pinus distributed chat")]
struct Args {
    /// The gate server (`host:port`); ignored when --connector is given.
    #[arg(long, default_value = "127.0.0.1:3014")]
    gate: String,
    /// Connect to this connector directly (`host:port`) instead of asking the gate.
    #[arg(long)]
    connector: Option<String>,
    /// Your name in the room.
    #[arg(long)]
    name: String,
    /// The room to join.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Use WebSocket instead of raw TCP.
    #[arg(long)]
    ws: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let transport = if args.ws {
        Transport::WebSocket
    } else {
        Transport::Tcp
    };
    let config = ClientConfig::default().with_request_timeout(Duration::from_secs(10));
    let (client, mut events) = match &args.connector {
        Some(addr) => Client::connect(addr, transport, config).await?,
        None => {
            let (client, events, entry) =
                connect_via_gate(&args.gate, transport, &args.name, config).await?;
            eprintln!("gate {} sent us to {}", args.gate, entry.addr());
            (client, events)
        }
    };
    let mut pushes = client.on_any();
    let reply = client
        .request(
            "connector.entryHandler.enter",
            &json!({"username": args.name, "rid": args.room}),
        )
        .await?;
    if reply.get("error").is_some() || reply.get("code").and_then(Value::as_u64) == Some(500) {
        eprintln!(
            "cannot enter room {}: the name {} is taken",
            args.room, args.name
        );
        client.close().await;
        std::process::exit(1);
    }
    println!(
        "* joined {} over {transport} as {}; in the room: {}",
        args.room, args.name, reply["users"]
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line == "/quit" {
                    break;
                }
                let (target, content) = match line.strip_prefix("/to ") {
                    Some(rest) => match rest.trim_start().split_once(' ') {
                        Some((name, text)) => (name.to_owned(), text.to_owned()),
                        None => {
                            eprintln!("usage: /to NAME text");
                            continue;
                        }
                    },
                    None => ("*".to_owned(), line.to_owned()),
                };
                let body = json!({
                    "rid": args.room, "content": content, "from": args.name, "target": target,
                });
                match client.request("chat.chatHandler.send", &body).await {
                    Ok(r) if r.get("code").and_then(Value::as_u64) == Some(500) => {
                        eprintln!("! not sent: no user {target} in {}", args.room);
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("! not sent: {e}"),
                }
            }
            Some(push) = pushes.recv() => print_push(&push),
            Some(event) = events.recv() => match event {
                Event::Kicked { reason } => println!("* kicked by the server: {reason}"),
                Event::Disconnected(reason) => {
                    println!("* disconnected: {reason}");
                    return Ok(());
                }
                other => eprintln!("! {other:?}"),
            },
        }
    }
    client.close().await;
    Ok(())
}

fn print_push(push: &Push) {
    let body = match push.value() {
        Ok(body) => body,
        Err(e) => {
            eprintln!("! bad {} push: {e}", push.route);
            return;
        }
    };
    let text = |key: &str| body[key].as_str().unwrap_or("?").to_owned();
    match &*push.route {
        "onChat" if body["target"] == "*" => println!("{}: {}", text("from"), text("msg")),
        "onChat" => println!("{} (private): {}", text("from"), text("msg")),
        "onAdd" => println!("* {} joined", text("user")),
        "onLeave" => println!("* {} left", text("user")),
        other => println!("[{other}] {body}"),
    }
}
