//! WebSocket helpers: connect to `/ws`, read frames, send commands.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use super::Hub;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

pub fn ws_url(hub: &Hub, path: &str) -> String {
    format!("{}{}", hub.url.replacen("http://", "ws://", 1), path)
}

pub async fn connect(hub: &Hub, path: &str) -> Socket {
    let (socket, response) = connect_async(ws_url(hub, path)).await.expect("upgrade");
    assert_eq!(response.status(), 101);
    socket
}

/// The next text frame, skipping pings.
pub async fn next_text(socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("no socket error");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next text frame as JSON, skipping pings.
pub async fn next_json(socket: &mut Socket) -> Value {
    serde_json::from_str(&next_text(socket).await).expect("JSON text frame")
}

/// Sends a command and returns the reply frame's text.
pub async fn command_text(socket: &mut Socket, command: Value) -> String {
    socket
        .send(Message::text(command.to_string()))
        .await
        .unwrap();
    next_text(socket).await
}

/// Sends a command and returns the reply.
pub async fn command(socket: &mut Socket, command: Value) -> Value {
    serde_json::from_str(&command_text(socket, command).await).expect("JSON reply")
}

/// Reads until the server's close frame and returns its code.
pub async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("closed in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
