//! Splitting a byte stream into Server-Sent Events, shared by the usage decoder ([`crate::usage`]) and the
//! stream translators ([`crate::translate`]).
//!
//! An event ends at a blank line: `\n\n`, or `\n\r\n` (CRLF line endings). Bytes arrive in chunks of any
//! size, so the splitter remembers how far it has already looked: a large event arriving in small chunks is
//! scanned once (linear), not once per chunk (quadratic), and complete events are removed from the buffer
//! with one `drain` per chunk, not one per event.

/// Buffered bytes of the event in progress, and how far into them a separator has been looked for.
#[derive(Debug, Default)]
pub struct EventBuffer {
    buf: Vec<u8>,
    /// Every separator starting before this offset has been found already.
    scanned: usize,
}

impl EventBuffer {
    /// Append `chunk` and call `f` on every event it completes (without its separator), in order.
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(chunk);
        let buf = &self.buf;
        let mut start = 0;
        let mut i = self.scanned;
        let resume = loop {
            let Some(nl) = memchr::memchr(b'\n', &buf[i..]) else {
                break buf.len();
            };
            let p = i + nl;
            match (buf.get(p + 1), buf.get(p + 2)) {
                (Some(b'\n'), _) => {
                    f(&buf[start..p]);
                    start = p + 2;
                    i = start;
                }
                (Some(b'\r'), Some(b'\n')) => {
                    f(&buf[start..p]);
                    start = p + 3;
                    i = start;
                }
                // The separator may be completed by the next chunk: look at this newline again then.
                (None, _) | (Some(b'\r'), None) => break p,
                _ => i = p + 1,
            }
        };
        self.scanned = resume - start;
        self.buf.drain(..start);
    }

    /// Bytes of the event in progress.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drop the event in progress (it grew past a cap).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }

    /// The unterminated trailing bytes, when the stream ends.
    pub fn take(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

/// `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Fixed needles with their searchers built once (`memmem::find` builds one per call, which costs more
/// than the search in a short event).
pub struct Needles(Vec<memchr::memmem::Finder<'static>>);

impl Needles {
    pub fn new(needles: &[&'static [u8]]) -> Self {
        Needles(
            needles
                .iter()
                .map(|n| memchr::memmem::Finder::new(*n))
                .collect(),
        )
    }

    /// Any of the needles occurs in `hay`.
    pub fn any_in(&self, hay: &[u8]) -> bool {
        self.0.iter().any(|f| f.find(hay).is_some())
    }
}

/// The `data:` lines of one event (without the field name and its one optional space), in order.
pub fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        loop {
            let r = rest?;
            let (line, next) = match memchr::memchr(b'\n', r) {
                Some(i) => (&r[..i], Some(&r[i + 1..])),
                None => (r, None),
            };
            rest = next;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(d) = line.strip_prefix(b"data:") {
                return Some(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let mut b = EventBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            b.feed(c, |e| out.push(String::from_utf8_lossy(e).into_owned()));
        }
        (out, b.take())
    }

    #[test]
    fn lf_and_crlf_separators_and_a_trailing_partial_event() {
        let (ev, rest) = events(&[b"data: a\n\ndata: b\r\n\r\ndata: c"]);
        assert_eq!(ev, ["data: a", "data: b\r"]);
        assert_eq!(rest, b"data: c");
    }

    #[test]
    fn separators_split_across_chunks_are_found() {
        // "\n" | "\n", "\n" | "\r\n", "\n\r" | "\n": every way a separator can straddle two chunks.
        let (ev, rest) = events(&[b"data: a\n", b"\ndata: b\n", b"\r\ndata: c\n\r", b"\nx"]);
        assert_eq!(ev, ["data: a", "data: b", "data: c"]);
        assert_eq!(rest, b"x");
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let whole: &[u8] = b"event: x\ndata: 1\n\n\ndata: 2\r\n\r\n\n\ndata: 3\ndata: 4\n\ntail";
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(events(&[whole]), events(&bytes));
        assert_eq!(
            events(&[whole]).0,
            ["event: x\ndata: 1", "\ndata: 2\r", "", "data: 3\ndata: 4"]
        );
    }

    #[test]
    fn data_lines_of_an_event() {
        let lines = |e: &[u8]| data_lines(e).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(
            lines(
                b"event: x\r\ndata: {\"a\":1}\r\nid: 3\ndata:two\ndata:  three\ndata:\n: comment"
            ),
            [&b"{\"a\":1}"[..], b"two", b" three", b""]
        );
        assert!(lines(b"event: x\nretry: 5").is_empty());
        assert_eq!(lines(b"data: last"), [&b"last"[..]]);
    }

    #[test]
    fn needles_find_what_contains_finds() {
        let n = Needles::new(&[b"\"usage\"", b"\"content\""]);
        for hay in [
            &b"{\"usage\":null}"[..],
            b"{\"content\":1}",
            b"{\"use\":2}",
            b"",
            b"\"usage",
        ] {
            assert_eq!(
                n.any_in(hay),
                contains(hay, b"\"usage\"") || contains(hay, b"\"content\""),
                "{}",
                String::from_utf8_lossy(hay)
            );
        }
    }

    #[test]
    fn a_large_event_in_small_chunks_is_scanned_once() {
        // 1 MiB of one event in 16-byte chunks: with a rescan per chunk this is ~32 G byte comparisons;
        // the offset makes it one pass. (Correctness is asserted; the linearity is what keeps this test fast.)
        let mut b = EventBuffer::default();
        let body = vec![b'a'; 1 << 20];
        let mut n = 0;
        for c in body.chunks(16) {
            b.feed(c, |_| n += 1);
        }
        assert_eq!((n, b.pending(), b.scanned), (0, 1 << 20, 1 << 20));
        b.feed(b"\n\n", |e| {
            n += 1;
            assert_eq!(e.len(), 1 << 20);
        });
        assert_eq!((n, b.pending()), (1, 0));
    }
}
