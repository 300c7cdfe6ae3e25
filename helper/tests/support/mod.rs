//! A tiny scriptable broker on 127.0.0.1:0 (std only), and a sandbox that runs the real binary in a
//! temporary HOME with a cleared environment.

#![allow(dead_code)]

use base64::Engine as _;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate::{Claims, Grant, IdentityKind, ModelPattern, Provenance, RateLimits};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate-token");
/// The credential every sandbox uses; tests assert it never shows up in any output.
pub const CREDENTIAL: &str = "cred-SENTINEL-7f3a9c";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// What the broker answers to the next `POST /oauth/token`.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with a fake JWT whose `exp` is now + secs (and `expires_in` = secs).
    Token { ttl_secs: u64 },
    /// A raw status and JSON body.
    Status(u16, String),
    /// Close the connection without answering.
    Close,
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    mints: AtomicUsize,
    forms: Mutex<Vec<BTreeMap<String, String>>>,
    usage: Mutex<Option<(u16, String)>>,
    usage_auth: Mutex<Vec<String>>,
    delay_ms: AtomicUsize,
    stop: AtomicBool,
}

pub struct FakeBroker {
    pub url: String,
    addr: std::net::SocketAddr,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn fake_jwt(exp: u64, jti: usize) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let claims = Claims {
        iss: "http://broker.test".into(),
        aud: "tollgate".into(),
        sub: "static:alice".into(),
        iat: now(),
        nbf: now(),
        exp,
        jti: format!("jti-{jti}"),
        grant: Grant {
            principal: "alice".into(),
            team: Some("platform".into()),
            org: None,
            models: vec![
                ModelPattern::new("gpt-5*").expect("p"),
                ModelPattern::new("demo").expect("p"),
            ],
            budgets: vec![],
            rate: RateLimits::default(),
            identity: Provenance {
                kind: IdentityKind::Static,
                subject: "alice".into(),
                issuer: None,
                rule: "r1".into(),
            },
            attributes: BTreeMap::new(),
        },
        pv: None,
    };
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"ES256","typ":"JWT","kid":"test"}"#),
        b64(&serde_json::to_vec(&claims).expect("json")),
        b64(format!("signature-{jti}").as_bytes())
    )
}

impl FakeBroker {
    pub fn start(default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        *state.default.lock().expect("lock") = Some(default);
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(conn, &st));
            }
        });
        FakeBroker {
            url: format!("http://{addr}"),
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// Answers for the next mints, in order, before falling back to the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().expect("lock").extend(replies);
    }

    pub fn set_default(&self, r: Reply) {
        *self.state.default.lock().expect("lock") = Some(r);
    }

    pub fn set_delay_ms(&self, ms: usize) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn set_usage(&self, status: u16, body: &str) {
        *self.state.usage.lock().expect("lock") = Some((status, body.to_owned()));
    }

    pub fn mints(&self) -> usize {
        self.state.mints.load(Ordering::SeqCst)
    }

    pub fn forms(&self) -> Vec<BTreeMap<String, String>> {
        self.state.forms.lock().expect("lock").clone()
    }

    pub fn usage_auth(&self) -> Vec<String> {
        self.state.usage_auth.lock().expect("lock").clone()
    }

    /// Stop listening: the same URL now refuses connections.
    pub fn stop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(conn: TcpStream, st: &State) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut conn = conn;
    match (method, path) {
        ("POST", "/oauth/token") => {
            let n = st.mints.fetch_add(1, Ordering::SeqCst) + 1;
            let form: BTreeMap<String, String> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            st.forms.lock().expect("lock").push(form);
            let delay = st.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay as u64));
            }
            let reply = st
                .script
                .lock()
                .expect("lock")
                .pop_front()
                .or_else(|| st.default.lock().expect("lock").clone())
                .unwrap_or(Reply::Close);
            match reply {
                Reply::Token { ttl_secs } => {
                    let body = serde_json::json!({
                        "access_token": fake_jwt(now() + ttl_secs, n),
                        "issued_token_type": tollgate::exchange::TOKEN_TYPE_ACCESS_TOKEN,
                        "token_type": "Bearer",
                        "expires_in": ttl_secs,
                    })
                    .to_string();
                    respond(&mut conn, 200, &body);
                }
                Reply::Status(code, body) => respond(&mut conn, code, &body),
                Reply::Close => {}
            }
        }
        ("GET", "/v1/tollgate/usage") => {
            st.usage_auth
                .lock()
                .expect("lock")
                .push(headers.get("authorization").cloned().unwrap_or_default());
            let (code, body) = st
                .usage
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or((404, "{}".into()));
            respond(&mut conn, code, &body);
        }
        _ => respond(&mut conn, 404, r#"{"error":"not_found"}"#),
    }
}

fn respond(conn: &mut TcpStream, code: u16, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

/// A URL on which nothing listens.
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    url
}

/// A temporary HOME with XDG dirs; runs the binary with a cleared environment.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let home = dir.path().to_str().expect("utf8").to_owned();
        let env = vec![
            ("HOME".to_owned(), home.clone()),
            ("XDG_CONFIG_HOME".to_owned(), format!("{home}/.config")),
            ("XDG_CACHE_HOME".to_owned(), format!("{home}/.cache")),
            ("CODEX_HOME".to_owned(), format!("{home}/.codex")),
            ("TOLLGATE_CREDENTIAL".to_owned(), CREDENTIAL.to_owned()),
        ];
        Sandbox { dir, env }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home().join(".cache/tollgate")
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.to_owned(), v.to_owned()));
    }

    pub fn unset(&mut self, k: &str) {
        self.env.retain(|(key, _)| key != k);
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("spawn"))
    }

    /// The cache files (not locks) currently present.
    pub fn cache_files(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.cache_dir()) else {
            return vec![];
        };
        let mut v: Vec<PathBuf> = rd
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        v.sort();
        v
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        let r = Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8(o.stdout).expect("utf8 stdout"),
            stderr: String::from_utf8(o.stderr).expect("utf8 stderr"),
        };
        assert!(
            !r.stdout.contains(CREDENTIAL) && !r.stderr.contains(CREDENTIAL),
            "credential leaked: {r:?}"
        );
        r
    }
}

/// A pinned test tool under `.test-tools/` (or `TOLLGATE_TEST_TOOLS`), or a panic that says how to
/// install it (`scripts/install-test-tools.sh`; the README's test command runs it).
pub fn tool(rel: &str) -> PathBuf {
    let root = std::env::var_os("TOLLGATE_TEST_TOOLS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-tools"),
        PathBuf::from,
    );
    let p = root.join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-tools.sh (the README's test command does)",
        p.display()
    );
    p
}
