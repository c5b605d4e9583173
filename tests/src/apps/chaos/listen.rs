//! The chaos app's listening side: the accept loop that can go down and come
//! back on the same port, and the connections it can reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{Shared, handle};

const BACKLOG: u32 = 1024;

pub(super) enum Op {
    Refuse(Option<Instant>),
    Accept,
    ResetAll,
}

pub(super) struct Command {
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<std::io::Result<()>>,
}

/// Listens on 127.0.0.1:0.
pub(super) fn listen_loopback() -> std::io::Result<TcpListener> {
    bound_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?.listen(BACKLOG)
}

/// Runs the accept loop; aborting the returned task ends every connection.
pub(super) fn spawn(
    listener: TcpListener,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    let accept = AcceptLoop {
        addr: listener.local_addr()?,
        socket: Socket::Listening(listener),
        reopen_at: None,
        conns: JoinSet::new(),
        kill: watch::Sender::new(0),
        commands,
        shared,
    };
    Ok(tokio::spawn(accept.run()))
}

/// SO_REUSEADDR so the port can be bound again while closed connections of the
/// previous listener are still in TIME_WAIT.
fn bound_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

enum Socket {
    Listening(TcpListener),
    /// Down. The port stays bound but not listening: connects are refused, and the
    /// kernel will not pick the port for a client's connect in the meantime, which
    /// would make listening on it again fail.
    Refusing(Option<TcpSocket>),
}

/// Owns the listener and every connection task, so aborting it ends them all.
struct AcceptLoop {
    addr: SocketAddr,
    socket: Socket,
    reopen_at: Option<Instant>,
    conns: JoinSet<()>,
    /// Bumped to RST every open connection.
    kill: watch::Sender<u64>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
}

impl AcceptLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                accepted = accept(&self.socket) => match accepted {
                    Ok(stream) => self.spawn(stream),
                    Err(e) => eprintln!("chaos app {}: accept: {e}", self.addr),
                },
                command = self.commands.recv() => {
                    let Some(Command { op, done }) = command else { return };
                    // The caller may have been a handler on a connection just killed.
                    let _ = done.send(self.apply(op).await);
                }
                () = sleep_until(self.reopen_at) => {
                    if let Err(e) = self.apply(Op::Accept).await {
                        eprintln!("chaos app {}: listening again: {e}", self.addr);
                    }
                }
                Some(_) = self.conns.join_next(), if !self.conns.is_empty() => {}
            }
        }
    }

    async fn apply(&mut self, op: Op) -> std::io::Result<()> {
        match op {
            Op::Refuse(until) => {
                self.reopen_at = until;
                if let Socket::Listening(_) = self.socket {
                    // Drop the listener before binding its port again.
                    self.socket = Socket::Refusing(None);
                    self.socket = Socket::Refusing(bound_socket(self.addr).ok());
                    self.shared.refusing.store(true, Ordering::SeqCst);
                }
                self.reset_all().await;
            }
            Op::Accept => {
                self.reopen_at = None;
                let placeholder = match &mut self.socket {
                    Socket::Listening(_) => return Ok(()),
                    Socket::Refusing(placeholder) => placeholder.take(),
                };
                let socket = match placeholder {
                    Some(s) => s,
                    None => bound_socket(self.addr)?,
                };
                self.socket = Socket::Listening(socket.listen(BACKLOG)?);
                self.shared.refusing.store(false, Ordering::SeqCst);
            }
            Op::ResetAll => self.reset_all().await,
        }
        Ok(())
    }

    /// Returns once every connection task has ended, so a caller that goes on to
    /// send cannot race a connection that is still about to die.
    async fn reset_all(&mut self) {
        self.kill.send_modify(|generation| *generation += 1);
        while self.conns.join_next().await.is_some() {}
    }

    fn spawn(&mut self, stream: TcpStream) {
        self.shared.http.connections.fetch_add(1, Ordering::SeqCst);
        let conn = connection(stream, self.shared.clone(), self.kill.subscribe());
        self.conns.spawn(conn);
    }
}

async fn accept(socket: &Socket) -> std::io::Result<TcpStream> {
    match socket {
        Socket::Listening(listener) => listener.accept().await.map(|(s, _)| s),
        Socket::Refusing(_) => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, mut kill: watch::Receiver<u64>) {
    // hyper takes the stream; a second descriptor for the same socket lets this
    // task make the final close an RST (SO_LINGER 0) after hyper has let go.
    let split = stream
        .into_std()
        .and_then(|s| Ok((s.try_clone()?, TcpStream::from_std(s)?)));
    let (control, stream) = match split {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("chaos app: duplicating a connection: {e}");
            return;
        }
    };
    let reset = Arc::new(Notify::new());
    let svc = {
        let reset = reset.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            shared.http.record(&req);
            handle(req, shared.clone(), reset.clone())
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let abort = tokio::select! {
        served = builder.serve_connection(TokioIo::new(stream), svc) => {
            if let Err(e) = served {
                // Clients giving up on a `hang` end up here; worth a line, not a panic.
                eprintln!("chaos app: connection: {e}");
            }
            false
        }
        () = reset.notified() => true,
        _ = kill.changed() => true,
    };
    if abort {
        // The hyper connection is already dropped; this is the last descriptor.
        if let Err(e) = TcpSocket::from_std_stream(control).set_zero_linger() {
            eprintln!("chaos app: SO_LINGER 0: {e}");
        }
    }
}
