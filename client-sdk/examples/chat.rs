//! A terminal chat client for pomelo's distributed chat (the pinus reference chat in
//! `benches/pinus-chat/`, or Shaddock's chat, which speaks the same routes).
//!
//! ```text
//! cargo run -p shaddock-client --example chat -- --gate 127.0.0.1:3014 --name bob --room lobby [--ws] [--reconnect]
//! ```
//!
//! Type a line to send it to the room, `/to NAME text` for a private message (echoed as
//! `(to NAME) text` once the server took it, or an error line), `/quit` (or end of input) to
//! leave. Pushes (`onChat`, `onAdd`, `onLeave`) are printed as they arrive.
//!
//! When the server kicks the client or the connection ends, the client prints why and exits
//! (status 1). With `--reconnect`, a lost connection is made again instead: through the gate
//! (or to `--connector`), re-entering the room under the same name; a kick still ends it.
//! `RUST_LOG=shaddock_client=debug` shows the client's logs.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use shaddock_client::{
    Client, ClientConfig, Error, Event, Push, ReconnectPolicy, Transport, connect_via_gate,
};
use tokio::sync::mpsc;

const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";

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
    /// Reconnect (and re-enter the room) when the connection is lost.
    #[arg(long)]
    reconnect: bool,
}

/// The server's refusal text when a reply is pomelo's `{code: 500, error: true, msg}`.
fn refusal(reply: &Value) -> Option<String> {
    let refused = reply.get("error").is_some_and(|e| e != false)
        || reply.get("code").and_then(Value::as_u64) == Some(500);
    refused.then(|| {
        reply
            .get("msg")
            .and_then(Value::as_str)
            .map_or_else(|| reply.to_string(), str::to_owned)
    })
}

/// Enter the room; the user names in it.
async fn enter(client: &Client, name: &str, room: &str) -> Result<Value, Error> {
    let reply = client
        .request(ENTER, &json!({"username": name, "rid": room}))
        .await?;
    match refusal(&reply) {
        Some(why) => Err(Error::hook(format!("cannot enter room {room}: {why}"))),
        None => Ok(reply["users"].clone()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("! {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Error> {
    let transport = if args.ws {
        Transport::WebSocket
    } else {
        Transport::Tcp
    };
    let mut config = ClientConfig::default().with_request_timeout(Duration::from_secs(10));
    if args.reconnect {
        let (name, room) = (args.name.clone(), args.room.clone());
        let policy = ReconnectPolicy::default()
            .with_max_attempts(Some(20))
            .on_reconnect(move |client| {
                let (name, room) = (name.clone(), room.clone());
                async move {
                    let users = enter(&client, &name, &room).await?;
                    println!(
                        "* back in {room} (via {}); in the room: {users}",
                        client.peer()
                    );
                    Ok(())
                }
            });
        config = config.with_reconnect(policy);
    }
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
    let users = match enter(&client, &args.name, &args.room).await {
        Ok(users) => users,
        Err(e) => {
            eprintln!("! {e}");
            client.close().await;
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "* joined {} over {transport} as {}; in the room: {users}",
        args.room, args.name
    );

    // Stdin is read on a thread of its own: a blocked read must not keep the process from
    // exiting when the server ends the connection.
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let code = loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break ExitCode::SUCCESS };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line == "/quit" {
                    break ExitCode::SUCCESS;
                }
                let (target, content) = match line.strip_prefix("/to ") {
                    Some(rest) => match rest.trim_start().split_once(' ') {
                        Some((name, text)) => (name.to_owned(), text.trim().to_owned()),
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
                match client.request(SEND, &body).await {
                    Ok(r) => match refusal(&r) {
                        Some(why) => println!("! not sent to {target}: {why}"),
                        // The room echoes room messages back to us as onChat; a private
                        // message is confirmed here.
                        None if target != "*" => println!("(to {target}) {content}"),
                        None => {}
                    },
                    Err(e) => println!("! not sent: {e}"),
                }
            }
            Some(push) = pushes.recv() => print_push(&push),
            Some(event) = events.recv() => match event {
                Event::Kicked { reason } => println!("* kicked by the server: {reason}"),
                Event::HeartbeatTimeout { after } => {
                    println!("* the server is silent (nothing for {after:?})");
                }
                Event::ConnectionLost { reason } => {
                    println!("* connection lost ({reason}); reconnecting");
                }
                Event::ReconnectAttempt { attempt, delay } => {
                    println!("* reconnect attempt {attempt} in {delay:?}");
                }
                Event::ReconnectFailed { attempt, error } => {
                    println!("* reconnect attempt {attempt} failed: {error}");
                }
                Event::Reconnected { attempt, peer } => {
                    println!("* reconnected to {peer} (attempt {attempt})");
                }
                Event::ReconnectGaveUp { attempts, elapsed } => {
                    println!("* gave up reconnecting after {attempts} attempts ({elapsed:?})");
                }
                Event::Disconnected(reason) => {
                    println!("* disconnected: {reason}; exiting");
                    return Ok(ExitCode::FAILURE);
                }
                other => eprintln!("! {other:?}"),
            },
        }
    };
    client.close().await;
    Ok(code)
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
