//! A real registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on loopback, TLS with a test CA, and either htpasswd (bcrypt)
//! authentication or the bearer-token flow with a small token server
//! ([`TokenServer`]); images pushed into it with skopeo. Both come from
//! Debian packages (`deploy/setup test` installs them); a test that finds
//! them missing fails, saying so.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the registry knows.
pub const USER: &str = "strata";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

/// How a [`TestRegistry`] authenticates its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic against an htpasswd file (bcrypt).
    Htpasswd,
    /// Bearer tokens from a [`TokenServer`] (distribution's `auth.token`):
    /// a client challenged with `WWW-Authenticate: Bearer realm=…` asks the
    /// token server, with basic credentials, for a token for its scope.
    Token,
}

/// A registry process with its own root, certificate and password file;
/// killed when dropped.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    /// `localhost:PORT`: the certificate names localhost.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The token server with [`Auth::Token`].
    pub tokens: Option<TokenServer>,
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e} (deploy/setup installs it)"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestRegistry {
    /// Starts one (TLS, htpasswd auth with [`USER`] and [`PASSWORD`]).
    pub fn start() -> Self {
        Self::start_with(Auth::Htpasswd)
    }

    /// Starts one with TLS and `auth` (either way, [`USER`] and
    /// [`PASSWORD`] are the only credentials it takes).
    pub fn start_with(auth: Auth) -> Self {
        Self::start_listening(auth, "127.0.0.1")
    }

    /// Starts one (TLS, htpasswd) listening on `ip` as well as reachable
    /// at `localhost:PORT` when `ip` is 0.0.0.0: for benches whose clients
    /// sit across a link (they skip the name check: the certificate names
    /// localhost). Started on a thread inside a network namespace, it
    /// listens there.
    pub fn start_on(ip: &str) -> Self {
        Self::start_listening(Auth::Htpasswd, ip)
    }

    fn start_listening(auth: Auth, ip: &str) -> Self {
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
        let (tokens, auth_config) = match auth {
            Auth::Htpasswd => {
                (None, format!("  htpasswd:\n    realm: strata-test\n    path: {d}/htpasswd\n"))
            }
            Auth::Token => {
                let signer = strata_tls::issue_node_cert(&ca, "token-signer").expect("signer");
                let tokens = TokenServer::start(&cert, signer);
                let config = format!(
                    "  token:\n    realm: https://localhost:{}/token\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {d}/certs/ca.crt\n",
                    tokens.port
                );
                (Some(tokens), config)
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n  tls:\n    certificate: {d}/cert.pem\n    \
             key: {d}/key.pem\nauth:\n{auth_config}"
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
        let mut registry = Self { child, dir, host: format!("localhost:{port}"), port, tokens };
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
        let field = log_field;
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

    /// Every request it answered, from its access log: (method, URI
    /// without the query, status), in order.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.log()
            .lines()
            .filter(|l| l.contains("response completed"))
            .filter_map(|l| {
                let method = log_field(l, "http.request.method")?;
                let uri = log_field(l, "http.request.uri")?;
                let uri = uri.split('?').next().unwrap_or(&uri).to_owned();
                Some((method, uri, log_field(l, "http.response.status")?.parse().ok()?))
            })
            .collect()
    }

    /// Blob uploads it completed (`PUT …/blobs/uploads/…` answered 201,
    /// the request that closes an upload); mounts are not counted.
    pub fn blob_uploads(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(m, uri, status)| m == "PUT" && uri.contains("/blobs/uploads/") && *status == 201)
            .count()
    }

    /// Where it stores repositories and blobs (the filesystem driver's
    /// root), for tests that damage what it serves.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `strata.toml` in the data dir `data` (read by the CLI and by
    /// a node there): this registry's CA and its credentials.
    pub fn write_settings(&self, data: &Path) {
        std::fs::create_dir_all(data).expect("data dir");
        let config = format!(
            "[registry.ca_files]\n{host:?} = {ca:?}\n[registry.auth.{host:?}]\nusername = {USER:?}\npassword = {PASSWORD:?}\n",
            host = self.host,
            ca = self.ca_file(),
        );
        std::fs::write(data.join("strata.toml"), config).expect("settings");
    }

    /// The CA certificate (PEM) its certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// The manifest of `repo_tag` and its config, byte for byte as the
    /// registry serves them (skopeo inspect --raw; an image with one
    /// manifest, not an index).
    pub fn manifest_and_config(&self, repo_tag: &str) -> (Vec<u8>, Vec<u8>) {
        let creds = format!("{USER}:{PASSWORD}");
        let certs = self.dir.path().join("certs");
        let target = format!("docker://{}/{repo_tag}", self.host);
        let inspect = |config: bool| {
            let mut command = Command::new("skopeo");
            command.args(["inspect", "--raw", "--creds", &creds, "--cert-dir"]).arg(&certs);
            if config {
                command.arg("--config");
            }
            let out = command.arg(&target).output().expect("skopeo (deploy/setup installs it)");
            assert!(
                out.status.success(),
                "skopeo inspect {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        (inspect(false), inspect(true))
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

/// A `name=value` (or `name="value"`) field of a registry log line.
fn log_field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(match rest.strip_prefix('"') {
        Some(quoted) => quoted[..quoted.find('"')?].to_owned(),
        None => rest.split(' ').next()?.to_owned(),
    })
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `service` a token is for (the registry's name in its challenge).
pub const TOKEN_SERVICE: &str = "strata-test-registry";
/// The `iss` of the tokens the token server signs.
pub const TOKEN_ISSUER: &str = "strata-test-tokens";

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user, if the client sent credentials.
    pub user: Option<String>,
    /// The `scope` parameters, decoded (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    /// Whether the credentials were right (else a 401, no token).
    pub granted: bool,
}

/// A token server as the distribution spec's token authentication
/// describes (docs/spec/auth/token.md): `GET /token?service=…&scope=…`
/// over TLS with optional basic credentials; answers a JWT (ES256, the
/// signing certificate in its `x5c` header, chained to the CA the
/// registry's `rootcertbundle` holds) granting the scopes' actions to
/// [`USER`] with [`PASSWORD`], nothing to an anonymous client, and a 401 to
/// wrong credentials. Stops when dropped.
pub struct TokenServer {
    /// Its port on 127.0.0.1 (TLS, the certificate names localhost).
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<TokenRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(tls: &strata_tls::CertPair, signer: strata_tls::CertPair) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("token server certificate");
        let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).expect("token server key");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("token server TLS");
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("token server port");
        let port = listener.local_addr().expect("addr").port();
        let requests = std::sync::Arc::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (requests, stop) = (std::sync::Arc::clone(&requests), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(connection) = rustls::ServerConnection::new(config.clone()) else { continue };
                    let mut tls = rustls::StreamOwned::new(connection, stream);
                    if let Some((status, body)) = answer_token_request(&mut tls, &signer, &requests) {
                        use std::io::Write;
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes());
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.conn.complete_io(&mut tls.sock);
                    }
                }
            }
        });
        Self { port, requests, stop, thread: Some(thread) }
    }

    /// The requests answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request from `stream` and returns the status line's status
/// and the JSON body to answer; `None` when the request is unreadable.
fn answer_token_request(
    stream: &mut impl std::io::Read,
    signer: &strata_tls::CertPair,
    requests: &std::sync::Mutex<Vec<TokenRequest>>,
) -> Option<(&'static str, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != "/token" {
        return Some(("404 Not Found", r#"{"errors":[{"code":"NOT_FOUND"}]}"#.into()));
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let scopes: Vec<String> = params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let basic = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.trim().strip_prefix("Basic ").map(str::to_owned));
    let credentials = basic.and_then(|b| {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        decoded.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))
    });
    let user = credentials.as_ref().map(|(u, _)| u.clone());
    let granted = match &credentials {
        Some((u, p)) => u == USER && p == PASSWORD,
        None => true,
    };
    if let Ok(mut log) = requests.lock() {
        log.push(TokenRequest { user: user.clone(), scopes: scopes.clone(), granted });
    }
    if !granted {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication failed"}]}"#;
        return Some(("401 Unauthorized", body.into()));
    }
    // An anonymous client gets a token that grants nothing: the registry
    // then refuses it (as a private repository does).
    let access: Vec<serde_json::Value> = if user.is_some() {
        scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.rsplitn(2, ':');
                let actions = parts.next()?;
                let (kind, name) = parts.next()?.split_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": user.unwrap_or_default(),
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let leaf = {
        use base64::Engine;
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(signer.cert_pem.as_bytes()).ok()?;
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![leaf]);
    let key = {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(signer.key_pem.as_bytes()).ok()?;
        jsonwebtoken::EncodingKey::from_ec_der(der.secret_pkcs8_der())
    };
    let token = jsonwebtoken::encode(&header, &claims, &key).ok()?;
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 });
    Some(("200 OK", body.to_string()))
}

/// `%XX` escapes and `+` (a space in a query) decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
