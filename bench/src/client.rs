//! A minimal blocking HTTP/1.1 client over one kept-alive TCP connection.
//!
//! Why hand-rolled: the latency probe must add as little and as steady a cost as possible on both sides
//! of a comparison, and must see the first body byte (time to first byte of a stream) exactly when the
//! kernel hands it over. One `write` per request, `TCP_NODELAY`, no allocation on the hot path beyond
//! the reused buffer.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Timings of one request, in nanoseconds from the moment the request was written.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub status: u16,
    /// First byte of the response body (for SSE: the first event).
    pub first_body_ns: u64,
    /// Whole response read.
    pub total_ns: u64,
    #[allow(dead_code)]
    pub body_bytes: usize,
}

/// A `http://host:port` base split into its parts.
#[derive(Clone, Debug)]
pub struct Base {
    pub host_port: String,
    pub prefix: String,
}

impl Base {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported (loopback benchmarks)")?;
        let (host_port, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        Ok(Base {
            host_port: host_port.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// Build the bytes of one POST request.
pub fn post_request(
    base: &Base,
    path: &str,
    bearer: Option<&str>,
    extra_headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = Vec::with_capacity(body.len() + 512);
    req.extend_from_slice(
        format!(
            "POST {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: */*\r\nContent-Length: {}\r\n",
            base.prefix,
            path,
            base.host_port,
            body.len()
        )
        .as_bytes(),
    );
    if let Some(t) = bearer {
        req.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    for (k, v) in extra_headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Conn {
    pub fn connect(base: &Base) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(&base.host_port)
            .with_context(|| format!("connect {}", base.host_port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Send one request and read the whole response.
    pub fn request(&mut self, req: &[u8]) -> anyhow::Result<Timing> {
        self.buf.clear();
        let start = Instant::now();
        self.stream.write_all(req)?;
        let mut first_body_ns = 0u64;
        let mut head_end: Option<usize> = None;
        let mut framing = Framing::Close;
        let mut status = 0u16;
        let mut tmp = [0u8; 16 * 1024];
        loop {
            let n = self.stream.read(&mut tmp)?;
            let now = Instant::now();
            if n == 0 {
                if head_end.is_some() && matches!(framing, Framing::Close) {
                    break;
                }
                bail!("connection closed before the response was complete");
            }
            self.buf.extend_from_slice(&tmp[..n]);
            if head_end.is_none()
                && let Some(i) = find(&self.buf, b"\r\n\r\n")
            {
                head_end = Some(i + 4);
                let head = std::str::from_utf8(&self.buf[..i]).context("non-UTF-8 head")?;
                let (s, f) = parse_head(head)?;
                status = s;
                framing = f;
            }
            if let Some(h) = head_end {
                if first_body_ns == 0 && self.buf.len() > h {
                    first_body_ns = (now - start).as_nanos() as u64;
                }
                let done = match framing {
                    Framing::Length(len) => self.buf.len() >= h + len,
                    Framing::Chunked => chunked_complete(&self.buf[h..]),
                    Framing::Close => false,
                };
                if done {
                    let total_ns = (now - start).as_nanos() as u64;
                    if first_body_ns == 0 {
                        first_body_ns = total_ns;
                    }
                    return Ok(Timing {
                        status,
                        first_body_ns,
                        total_ns,
                        body_bytes: self.buf.len() - h,
                    });
                }
            }
        }
        let total_ns = start.elapsed().as_nanos() as u64;
        Ok(Timing {
            status,
            first_body_ns: if first_body_ns == 0 {
                total_ns
            } else {
                first_body_ns
            },
            total_ns,
            body_bytes: self.buf.len() - head_end.unwrap_or(0),
        })
    }

    /// Send a request and return once the first body byte arrived, leaving the response open.
    pub fn open(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        self.buf.clear();
        self.stream.write_all(req)?;
        let mut tmp = [0u8; 16 * 1024];
        loop {
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                bail!("closed before the first body byte");
            }
            self.buf.extend_from_slice(&tmp[..n]);
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..i]).context("non-UTF-8 head")?;
                let (s, _) = parse_head(head)?;
                if self.buf.len() > i + 4 || s != 200 {
                    return Ok(s);
                }
            }
        }
    }
}

fn parse_head(head: &str) -> anyhow::Result<(u16, Framing)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut framing = Framing::Close;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(v.parse().context("content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        }
    }
    Ok((status, framing))
}

/// Whether `body` holds a complete chunked encoding (up to and including the last-chunk CRLF).
fn chunked_complete(body: &[u8]) -> bool {
    let mut i = 0;
    loop {
        let Some(eol) = find(&body[i..], b"\r\n") else {
            return false;
        };
        let line = &body[i..i + eol];
        let size_str = std::str::from_utf8(line)
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            return false;
        };
        i += eol + 2;
        if size == 0 {
            // Trailers (none expected) then CRLF.
            return find(&body[i..], b"\r\n").is_some();
        }
        if body.len() < i + size + 2 {
            return false;
        }
        i += size + 2;
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_framing() {
        assert!(chunked_complete(b"5\r\nhello\r\n0\r\n\r\n"));
        assert!(!chunked_complete(b"5\r\nhello\r\n0\r\n"));
        assert!(!chunked_complete(b"5\r\nhel"));
        assert!(chunked_complete(b"0\r\n\r\n"));
    }

    #[test]
    fn base_url() {
        let b = Base::parse("http://127.0.0.1:8080/v1").expect("parse");
        assert_eq!(b.host_port, "127.0.0.1:8080");
        assert_eq!(b.prefix, "/v1");
        assert!(Base::parse("https://x").is_err());
    }
}
