//! A tiny HTTP/1.1 server with a fixed, precisely timed service delay, for
//! checking the load generator's accuracy and throughput.
//!
//! It runs on its own thread with its own current-thread runtime, so it does
//! not compete with the load generator's runtime. Each request is answered
//! after exactly `delay` (timed with a timerfd, see [`crate::clock`]), with a
//! body of `body_len` bytes, keeping the connection alive or closing it.
//! With `busy_poll` the server never parks, so its own wake-up latency (50 µs
//! or more on these VMs) does not blur the service time.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::clock::{PreciseTimer, mono_ns};

/// How the server answers.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    pub delay: Duration,
    pub keep_alive: bool,
    pub body_len: usize,
    /// Keep the server's runtime polling instead of sleeping in epoll, so
    /// that waking up adds nothing to the service time (costs a whole core).
    pub busy_poll: bool,
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving.
    pub fn start(options: ServerOptions) -> io::Result<Self> {
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept_loop(listener, options) => {}
                        _ = spin(options.busy_poll) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Yields forever when asked to, which keeps the runtime from parking.
async fn spin(busy_poll: bool) {
    if busy_poll {
        loop {
            tokio::task::yield_now().await;
        }
    }
    std::future::pending::<()>().await;
}

async fn accept_loop(listener: TcpListener, options: ServerOptions) {
    let response = response_bytes(&options);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let response = response.clone();
        tokio::spawn(async move {
            let _ = serve(stream, options, &response).await;
        });
    }
}

fn response_bytes(options: &ServerOptions) -> Vec<u8> {
    let connection = if options.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        options.body_len
    )
    .into_bytes();
    bytes.resize(bytes.len() + options.body_len, b'x');
    bytes
}

async fn serve(mut stream: TcpStream, options: ServerOptions, response: &[u8]) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut timer = PreciseTimer::new()?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head (the load generator sends GETs without body).
        let received = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            buf.reserve(4096);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let arrived = mono_ns();
        buf.drain(..received);
        if !options.delay.is_zero() {
            timer
                .sleep_until(arrived + options.delay.as_nanos() as u64)
                .await?;
        }
        stream.write_all(response).await?;
        if !options.keep_alive {
            return stream.shutdown().await;
        }
    }
}
