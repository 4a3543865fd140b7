//! A `redis-server` started by a test on a free port, and nodes of a hub
//! on it (`--storage redis`): for the cluster's tests and its benchmark's.
//! The binary must be installed (scripts/test installs it): without it
//! these tests fail, not skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Hub, START_TIMEOUT};

/// A `redis-server` of a test's own, on loopback, stopped when dropped.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Without persistence: a restart would lose everything.
    pub fn start() -> Redis {
        Redis::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Every write is in the append-only file, fsynced, before Redis
    /// answers it: a restart keeps the stream.
    pub fn persistent() -> Redis {
        Redis::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    pub fn start_with(args: &[&str]) -> Redis {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "redis-server is not installed: the Redis tests need it \
                 (apt-get install redis-server; scripts/test installs it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis {
            port,
            dir: tempfile::tempdir().expect("a temporary directory"),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        redis.run();
        redis
    }

    /// TLS only, on the port, with a certificate for 127.0.0.1 that a test
    /// authority signed; returns the server and the directory of the
    /// certificates (the authority's is `ca.crt`).
    pub fn tls() -> (Redis, tempfile::TempDir) {
        let certs = tempfile::tempdir().expect("a temporary directory");
        let dir = certs.path();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ];
        openssl(&[&["req", "-x509"][..], &key, &ca].concat());
        let server = [
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ];
        openssl(&[&["req"][..], &key, &server].concat());
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext",
        ]);
        let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let args = [
            "--save".to_string(),
            String::new(),
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            "{port}".into(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let redis = Redis::start_with(&args);
        (redis, certs)
    }

    /// Starts the server (again, on the same port and directory) and waits
    /// until it answers (with TLS, until it accepts connections).
    pub fn run(&mut self) {
        let port = self.port.to_string();
        let args = self
            .args
            .iter()
            .map(|a| if a == "{port}" { &port } else { a });
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut reply = [0u8; 64];
                if tls {
                    return;
                }
                if conn.write_all(b"PING\r\n").is_ok()
                    && conn.read(&mut reply).is_ok_and(|n| n > 0)
                    && !reply.starts_with(b"-LOADING")
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node of the hub on `redis`, with `extra` flags, and
/// keep-alives every second.
pub async fn node(redis: &Redis, extra: &[&str]) -> Hub {
    let url = redis.url();
    let mut args = vec![
        "--storage",
        "redis",
        "--redis-url",
        &url,
        "--keepalive",
        "1s",
    ];
    args.extend_from_slice(extra);
    Hub::start(&args).await
}
