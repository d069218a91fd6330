//! A real registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on loopback, TLS with a test CA, htpasswd (bcrypt) authentication;
//! images pushed into it with skopeo. Both come from Debian packages
//! (`deploy/setup test` installs them); a test that finds them missing
//! fails, saying so.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the registry knows.
pub const USER: &str = "strata";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A registry process with its own root, certificate and password file;
/// killed when dropped.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    /// `localhost:PORT`: the certificate names localhost.
    pub host: String,
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e} (deploy/setup installs it)"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestRegistry {
    /// Starts one (TLS, htpasswd auth with [`USER`] and [`PASSWORD`]).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = strata_tls::generate_ca("registry-test").expect("ca");
        let cert = strata_tls::issue_node_cert(&ca, "localhost").expect("cert");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        std::fs::write(certs.join("ca.crt"), &ca.cert_pem).expect("ca");
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).expect("cert");
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem).expect("key");
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
        std::fs::write(dir.path().join("htpasswd"), htpasswd).expect("htpasswd");
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let d = dir.path().display();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {d}/cert.pem\n    \
             key: {d}/key.pem\nauth:\n  htpasswd:\n    realm: strata-test\n    path: {d}/htpasswd\n"
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (deploy/setup installs it)");
        let mut registry = Self { child, dir, host: format!("localhost:{port}") };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("the registry exited ({status}): {}", registry.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the registry never listened: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The blob downloads it served, from its access log: each successful
    /// `GET /v2/REPO/blobs/DIGEST` as (digest, bytes written), in order.
    pub fn blob_downloads(&self) -> Vec<(String, u64)> {
        let field = |line: &str, name: &str| -> Option<String> {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            let rest = &line[start..];
            Some(match rest.strip_prefix('"') {
                Some(quoted) => quoted[..quoted.find('"')?].to_owned(),
                None => rest.split(' ').next()?.to_owned(),
            })
        };
        self.log()
            .lines()
            .filter(|l| l.contains("response completed"))
            .filter(|l| field(l, "http.request.method").as_deref() == Some("GET"))
            .filter(|l| field(l, "http.response.status").as_deref() == Some("200"))
            .filter_map(|l| {
                let uri = field(l, "http.request.uri")?;
                let (_, digest) = uri.split_once("/blobs/")?;
                Some((digest.to_owned(), field(l, "http.response.written")?.parse().ok()?))
            })
            .collect()
    }

    /// Where it stores repositories and blobs (the filesystem driver's
    /// root), for tests that damage what it serves.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The CA certificate (PEM) its certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// Pushes a docker-save archive as `repo:tag` with skopeo.
    pub fn push(&self, archive: &Path, repo_tag: &str) {
        let creds = format!("{USER}:{PASSWORD}");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-creds", &creds, "--dest-cert-dir"])
            .args([
                self.dir.path().join("certs").as_os_str(),
                format!("docker-archive:{}", archive.display()).as_ref(),
                format!("docker://{}/{repo_tag}", self.host).as_ref(),
            ]));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
