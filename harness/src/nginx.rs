//! Debian's nginx, pinned to one core, serving a small file from a scratch
//! directory: a fast keep-alive HTTP/1.1 server, for load beyond what the
//! Flask app can take and for pipelining, which gunicorn does not do.
use std::{
    fs, io,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Bytes of the file nginx serves at `/index.html`.
pub const INDEX_LEN: usize = 612;

pub struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx on `127.0.0.1:port`, pinned to `core`, and waits until it
    /// accepts connections.
    pub fn start(port: u16, core: usize) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("harness-nginx-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("index.html"), "x".repeat(INDEX_LEN))?;
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n \
             keepalive_requests 1000000;\n client_body_temp_path {d};\n proxy_temp_path {d};\n \
             fastcgi_temp_path {d};\n uwsgi_temp_path {d};\n scgi_temp_path {d};\n \
             server {{ listen 127.0.0.1:{port}; root {d}; }}\n}}\n",
            d = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("taskset")
            .args(["-c", &core.to_string(), "nginx", "-c"])
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting nginx ({e}); `cargo xtask setup` installs it"),
                )
            })?;
        let mut nginx = Self { child, port, dir };
        let ceiling = crate::patience::ceiling(Duration::from_secs(10));
        let deadline = Instant::now() + ceiling;
        while TcpStream::connect(nginx.addr()).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nginx exited at start ({status}): is port {port} taken?"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "nginx did not listen on port {port} within {ceiling:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// The master's pid: the root of the process tree to trace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
