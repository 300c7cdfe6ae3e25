//! The loopback redirect of a browser sign-in (RFC 8252 §7.3): a listener on `127.0.0.1`, on a port
//! the system picks, that takes the one redirect carrying this sign-in's `state` and answers the
//! browser with a short page. Only `GET /callback` is served; anything else gets a 404 and is ignored.

use crate::error::SignInError;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const PATH: &str = "/callback";
/// A request line longer than this is not a redirect of ours.
const MAX_REQUEST_LINE: usize = 16 * 1024;

pub struct Listener {
    inner: TcpListener,
    port: u16,
}

/// What the redirect brought.
pub struct Redirect {
    pub code: String,
}

impl Listener {
    pub fn bind() -> io::Result<Self> {
        let inner = TcpListener::bind("127.0.0.1:0")?;
        let port = inner.local_addr()?.port();
        inner.set_nonblocking(true)?;
        Ok(Listener { inner, port })
    }

    /// `http://127.0.0.1:{port}/callback`: an IP literal, not `localhost` (RFC 8252 §8.3).
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    /// Wait until `deadline` for the redirect. `state` must match exactly; `iss` (RFC 9207), when the
    /// server sends it, must be the issuer.
    pub fn wait(
        &self,
        state: &str,
        issuer: &str,
        deadline: Instant,
    ) -> Result<Redirect, SignInError> {
        loop {
            match self.inner.accept() {
                Ok((stream, _)) => {
                    if let Some(result) = handle(stream, state, issuer) {
                        return result;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(SignInError::TimedOut(
                            "the browser did not come back to this computer in time".into(),
                        ));
                    }
                    // Polling a non-blocking socket keeps the deadline exact without a thread.
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => {
                    return Err(SignInError::TimedOut(format!(
                        "the loopback listener failed: {e}"
                    )));
                }
            }
        }
    }
}

/// One connection: `None` if it was not a redirect to our path (keep waiting).
fn handle(stream: TcpStream, state: &str, issuer: &str) -> Option<Result<Redirect, SignInError>> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    let n = Read::take(&mut reader, MAX_REQUEST_LINE as u64)
        .read_line(&mut line)
        .ok()?;
    // Drain the headers so the browser sees a clean answer.
    let mut header = String::new();
    while reader
        .read_line(&mut header)
        .is_ok_and(|k| k > 2 && header.len() < 64 * 1024)
    {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if n == 0 || method != "GET" || path != PATH {
        respond(
            &stream,
            404,
            "Not found",
            "This address only takes a sign-in redirect.",
        );
        return None;
    }
    let params: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let result = check(&params, state, issuer);
    match &result {
        Ok(_) => respond(
            &stream,
            200,
            "Signed in",
            "You are signed in to Tollgate. You can close this tab and go back to the terminal.",
        ),
        Err(e) => respond(&stream, 400, "Sign-in failed", &e.to_string()),
    }
    Some(result)
}

fn check(
    params: &HashMap<String, String>,
    state: &str,
    issuer: &str,
) -> Result<Redirect, SignInError> {
    // The state first: an error redirect that is not ours must not end this sign-in's story either.
    if params.get("state").map(String::as_str) != Some(state) {
        return Err(SignInError::Mismatch("state"));
    }
    if let Some(iss) = params.get("iss")
        && iss.trim_end_matches('/') != issuer.trim_end_matches('/')
    {
        return Err(SignInError::Mismatch("iss"));
    }
    if let Some(error) = params.get("error") {
        return Err(SignInError::Denied {
            error: crate::exchange::sanitize(error, 64),
            description: params
                .get("error_description")
                .map(|d| crate::exchange::sanitize(d, 300)),
        });
    }
    match params.get("code") {
        Some(code) if !code.is_empty() => Ok(Redirect { code: code.clone() }),
        _ => Err(SignInError::Denied {
            error: "invalid_request".into(),
            description: Some("the redirect carried no code".into()),
        }),
    }
}

/// A minimal, self-contained page (no script, nothing loaded from elsewhere).
fn respond(mut stream: &TcpStream, status: u16, title: &str, text: &str) {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><main><h1>{t}</h1><p>{p}</p></main></body></html>",
        t = esc(title),
        p = esc(text)
    );
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\ncontent-security-policy: default-src 'none'\r\nreferrer-policy: no-referrer\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, target: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(s, "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn run(targets: &'static [&'static str]) -> (Result<Redirect, SignInError>, Vec<String>) {
        let l = Listener::bind().expect("bind");
        let port = l.port;
        let client =
            std::thread::spawn(move || targets.iter().map(|t| get(port, t)).collect::<Vec<_>>());
        let r = l.wait(
            "st-123",
            "http://127.0.0.1:1",
            Instant::now() + Duration::from_secs(10),
        );
        (r, client.join().expect("client"))
    }

    #[test]
    fn the_redirect_with_our_state_gives_the_code() {
        let (r, pages) = run(&["/favicon.ico", "/callback?code=abc&state=st-123"]);
        assert_eq!(r.expect("code").code, "abc");
        assert!(pages[0].starts_with("HTTP/1.1 404"), "{}", pages[0]);
        assert!(pages[1].starts_with("HTTP/1.1 200"), "{}", pages[1]);
        assert!(pages[1].contains("You are signed in"), "{}", pages[1]);
    }

    #[test]
    fn a_wrong_or_missing_state_or_issuer_is_refused() {
        for (target, want) in [
            ("/callback?code=abc&state=other", "state"),
            ("/callback?code=abc", "state"),
            (
                "/callback?code=abc&state=st-123&iss=http%3A%2F%2Fevil",
                "iss",
            ),
        ] {
            let t: &'static str = Box::leak(target.to_owned().into_boxed_str());
            let targets: &'static [&'static str] = Box::leak(vec![t].into_boxed_slice());
            let (r, pages) = run(targets);
            match r {
                Err(SignInError::Mismatch(w)) => assert_eq!(w, want, "{target}"),
                other => panic!("{target}: {:?}", other.map(|r| r.code)),
            }
            assert!(pages[0].starts_with("HTTP/1.1 400"), "{}", pages[0]);
        }
    }

    #[test]
    fn an_error_redirect_is_a_denial_with_its_reason() {
        let (r, _) =
            run(&["/callback?error=access_denied&error_description=no%3Cscript%3E&state=st-123"]);
        match r {
            Err(SignInError::Denied { error, description }) => {
                assert_eq!(error, "access_denied");
                assert_eq!(description.as_deref(), Some("no<script>"));
            }
            other => panic!("{:?}", other.map(|r| r.code)),
        }
    }

    #[test]
    fn nobody_coming_back_times_out() {
        let l = Listener::bind().expect("bind");
        let r = l.wait("s", "i", Instant::now());
        assert!(matches!(r, Err(SignInError::TimedOut(_))));
    }
}
