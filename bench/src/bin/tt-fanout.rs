//! The tokio-tungstenite peer of `operator-bench`: a WebSocket server that relays every text
//! message a client sends to all other clients (a tokio broadcast channel, deep enough that no
//! subscriber lags in the benchmark). Prints its address on stdout; exits when stdin closes.

use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

fn main() -> anyhow::Result<()> {
    palyra_bench::peer_runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        let (tx, _) = broadcast::channel::<(u64, Message)>(1 << 16);
        let mut next_id = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            next_id += 1;
            let id = next_id;
            let tx = tx.clone();
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut write, mut read) = ws.split();
                loop {
                    tokio::select! {
                        incoming = read.next() => match incoming {
                            Some(Ok(m @ Message::Text(_))) => { let _ = tx.send((id, m)); }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        relayed = rx.recv() => match relayed {
                            Ok((from, m)) if from != id => {
                                if write.send(m).await.is_err() { return; }
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                eprintln!("subscriber lagged by {n}");
                            }
                            Err(_) => return,
                        },
                    }
                }
            });
        }
    })
}
