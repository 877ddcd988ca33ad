//! Reading an HTTP/1.x request head: a pure function from the bytes a client
//! has sent so far to one of three answers, [`Parsed::Incomplete`] (wait for
//! more), [`Parsed::Complete`] (the request, borrowed from those bytes) or
//! [`Parsed::Rejected`] (the 4xx/5xx to answer before closing).
//!
//! This is not virtio: it is the one piece of the kernel that parses what an
//! arbitrary network client sends, so it is kept apart from everything else:
//! no allocation, no state, no `unsafe`, only `core`. The server
//! (`services.rs`) calls [`parse`] again on the longer buffer each time more
//! bytes arrive; a head is at most [`MAX_HEAD`] bytes, so that stays cheap.
//! The host tests (`tests/tests/http_request.rs`) and the fuzz target
//! include this very file with `#[path]`, so keep it free of `crate::` paths.
//!
//! What it accepts (RFC 9112, HTTP/1.1 message syntax; RFC 9110 for the
//! status codes):
//!
//! ```text
//! request-line = method SP request-target SP HTTP-version CRLF   (§3)
//! field-line   = field-name ":" OWS field-value OWS CRLF          (§5)
//! head         = request-line *field-line CRLF
//! ```
//!
//! A bare LF ends a line as well as CRLF (§2.2 allows it); leading empty
//! lines before the request line are skipped (§2.2). What it refuses, and
//! with which status:
//!
//! | what the client sent | status |
//! | --- | --- |
//! | a request line longer than [`MAX_REQUEST_LINE`] | 414 URI Too Long |
//! | a head longer than [`MAX_HEAD`], or more than [`MAX_HEADERS`] fields | 431 Request Header Fields Too Large |
//! | a body (`Content-Length` above [`MAX_BODY`]) | 413 Content Too Large |
//! | `Transfer-Encoding` (no request bodies here) | 501 Not Implemented |
//! | an HTTP version other than 1.x | 505 HTTP Version Not Supported |
//! | anything else malformed: control bytes, a bare CR, whitespace before a colon, line folding (§5.2), a target that is neither origin- nor absolute-form, a bad or repeated `Content-Length`, HTTP/1.1 without exactly one `Host` (§3.2) | 400 Bad Request |
//!
//! Errors are reported as soon as the bytes seen prove them (a binary blob
//! is refused at its first control byte, not after a timeout).

/// The longest request head accepted: request line, fields, blank line.
pub const MAX_HEAD: usize = 4096;
/// The longest request line accepted (most of it is the target).
pub const MAX_REQUEST_LINE: usize = 1024;
/// The most header fields accepted.
pub const MAX_HEADERS: usize = 32;
/// The largest request body accepted: none, every resource here is read-only.
pub const MAX_BODY: u64 = 0;

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1` (and any later 1.x, answered as 1.1, RFC 9110 §6.2).
    Http11,
}

/// A complete request head, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, a token such as `GET` (case-sensitive, RFC 9110 §9.1).
    pub method: &'a str,
    /// The path: the target up to `?` (for an absolute-form target, the part
    /// after the authority; `/` if it has none).
    pub path: &'a str,
    /// What followed `?`, if anything.
    pub query: Option<&'a str>,
    /// The version.
    pub version: Version,
    /// The `Host` field's value (trimmed), if present.
    pub host: Option<&'a str>,
    /// Bytes of the head, blank line included: a body would start here.
    pub head_len: usize,
}

/// Why a request is refused; [`Rejection::status`] is what to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: malformed; the text says what was wrong.
    BadRequest(&'static str),
    /// 413: the request announces a body.
    ContentTooLarge,
    /// 414: the request line is longer than [`MAX_REQUEST_LINE`].
    UriTooLong,
    /// 431: the head is longer than [`MAX_HEAD`] or has too many fields.
    HeadersTooLarge,
    /// 501: a `Transfer-Encoding` (request bodies are not supported).
    NotImplemented,
    /// 505: not HTTP/1.x.
    VersionNotSupported,
}

impl Rejection {
    /// The status code to answer.
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::ContentTooLarge => 413,
            Rejection::UriTooLong => 414,
            Rejection::HeadersTooLarge => 431,
            Rejection::NotImplemented => 501,
            Rejection::VersionNotSupported => 505,
        }
    }

    /// One line for the response body.
    pub fn detail(self) -> &'static str {
        match self {
            Rejection::BadRequest(why) => why,
            Rejection::ContentTooLarge => "request bodies are not accepted",
            Rejection::UriTooLong => "request line too long",
            Rejection::HeadersTooLarge => "request head too large",
            Rejection::NotImplemented => "Transfer-Encoding is not supported",
            Rejection::VersionNotSupported => "only HTTP/1.x",
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole head yet, and nothing wrong so far: wait for more.
    Incomplete,
    /// A whole, valid head.
    Complete(Request<'a>),
    /// Refused: answer [`Rejection::status`] and close.
    Rejected(Rejection),
}

/// Parses the start of `bytes` as a request head (see the module docs).
/// Bytes after the head (a pipelined request) are ignored.
pub fn parse(bytes: &[u8]) -> Parsed<'_> {
    match parse_head(bytes) {
        Ok(Some(request)) => Parsed::Complete(request),
        Ok(None) => Parsed::Incomplete,
        Err(rejection) => Parsed::Rejected(rejection),
    }
}

/// `Ok(None)`: incomplete but valid so far.
fn parse_head(bytes: &[u8]) -> Result<Option<Request<'_>>, Rejection> {
    let mut lines = Lines { bytes, at: 0 };
    // Empty lines before the request line are skipped (RFC 9112 §2.2).
    let request_line = loop {
        match lines.next_line()? {
            Line::Complete(b"") => continue,
            Line::Complete(line) => break line,
            Line::Partial(partial) => {
                check_partial_request_line(partial)?;
                return too_long_or_wait(bytes);
            }
        }
    };
    if request_line.len() > MAX_REQUEST_LINE {
        return Err(Rejection::UriTooLong);
    }
    let (method, target, version) = parse_request_line(request_line)?;

    let mut host: Option<&str> = None;
    let mut content_length: Option<u64> = None;
    let mut fields = 0usize;
    loop {
        let line = match lines.next_line()? {
            Line::Complete(line) => line,
            Line::Partial(partial) => {
                check_field_bytes(partial)?;
                return too_long_or_wait(bytes);
            }
        };
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(Rejection::HeadersTooLarge);
        }
        let (name, value) = parse_field(line)?;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(Rejection::BadRequest("more than one Host field"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(Rejection::BadRequest("conflicting Content-Length fields"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Rejection::NotImplemented);
        }
    }
    let head_len = lines.at;
    if head_len > MAX_HEAD {
        return Err(Rejection::HeadersTooLarge);
    }
    if version == Version::Http11 && host.is_none() {
        // RFC 9112 §3.2: "A server MUST respond with a 400 ... to any
        // HTTP/1.1 request message that lacks a Host header field".
        return Err(Rejection::BadRequest("HTTP/1.1 request without Host"));
    }
    if content_length.is_some_and(|length| length > MAX_BODY) {
        return Err(Rejection::ContentTooLarge);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok(Some(Request {
        method,
        path,
        query,
        version,
        host,
        head_len,
    }))
}

/// An incomplete head: refused if it is already too long, else wait.
fn too_long_or_wait<'a>(bytes: &[u8]) -> Result<Option<Request<'a>>, Rejection> {
    if bytes.len() > MAX_HEAD {
        Err(Rejection::HeadersTooLarge)
    } else {
        Ok(None)
    }
}

/// One line of the head, without its CRLF or LF.
enum Line<'a> {
    /// Ended by LF.
    Complete(&'a [u8]),
    /// The bytes after the last LF: the line has not ended yet.
    Partial(&'a [u8]),
}

/// Splits the head into lines, refusing a CR that is not right before LF.
struct Lines<'a> {
    bytes: &'a [u8],
    /// Where the next line starts.
    at: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Result<Line<'a>, Rejection> {
        let rest = &self.bytes[self.at.min(self.bytes.len())..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // A CR as the very last byte may still be followed by LF.
            let body = rest.strip_suffix(b"\r").unwrap_or(rest);
            if body.contains(&b'\r') {
                return Err(Rejection::BadRequest("bare CR in the request head"));
            }
            return Ok(Line::Partial(rest));
        };
        self.at += end + 1;
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(Rejection::BadRequest("bare CR in the request head"));
        }
        Ok(Line::Complete(line))
    }
}

/// `method SP target SP version`, each part checked.
fn parse_request_line(line: &[u8]) -> Result<(&str, &str, Version), Rejection> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::BadRequest(
            "request line is not `METHOD TARGET VERSION`",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Rejection::BadRequest("method is not a token"));
    }
    let version = parse_version(version)?;
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(Rejection::BadRequest(
            "target is empty or has bytes outside visible ASCII",
        ));
    }
    let target = origin_form(target)?;
    // Both are ASCII (checked above), so they are UTF-8.
    let method = core::str::from_utf8(method).map_err(|_| Rejection::BadRequest("method"))?;
    let target = core::str::from_utf8(target).map_err(|_| Rejection::BadRequest("target"))?;
    Ok((method, target, version))
}

/// `HTTP/x.y`: 1.0 and 1.x are served, another major version is 505.
fn parse_version(version: &[u8]) -> Result<Version, Rejection> {
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            match (major, minor) {
                (b'1', b'0') => Ok(Version::Http10),
                (b'1', _) => Ok(Version::Http11),
                _ => Err(Rejection::VersionNotSupported),
            }
        }
        _ => Err(Rejection::BadRequest("version is not HTTP/<digit>.<digit>")),
    }
}

/// The origin-form part of a target (RFC 9112 §3.2): `/path?query` as is;
/// `http://authority/path?query` reduced to `/path?query` (a server must
/// accept the absolute form, §3.2.2). Anything else (`*`, the authority
/// form) names no resource here.
fn origin_form(target: &[u8]) -> Result<&[u8], Rejection> {
    if target.first() == Some(&b'/') {
        return Ok(target);
    }
    let scheme_len = if starts_with_ignore_case(target, b"http://") {
        7
    } else if starts_with_ignore_case(target, b"https://") {
        8
    } else {
        return Err(Rejection::BadRequest(
            "target is neither /path nor http://host/path",
        ));
    };
    let rest = &target[scheme_len..];
    let authority_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    if authority_len == 0 {
        return Err(Rejection::BadRequest("absolute target without a host"));
    }
    match rest.get(authority_len) {
        Some(b'/') => Ok(&rest[authority_len..]),
        // `http://host` or `http://host?q`: the path is `/` (RFC 9112 §3.2.2).
        _ => Ok(b"/"),
    }
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `name: value` with the value's surrounding spaces and tabs trimmed.
fn parse_field(line: &[u8]) -> Result<(&str, &str), Rejection> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obsolete line folding, which a server may refuse.
        return Err(Rejection::BadRequest("folded header line"));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(Rejection::BadRequest("header line without a colon"));
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        // Includes whitespace before the colon, which §5.1 says to refuse.
        return Err(Rejection::BadRequest("header name is not a token"));
    }
    check_field_bytes(value)?;
    let value = trim_ows(value);
    // Names are tokens (ASCII); a value may carry obs-text (bytes >= 0x80),
    // which this server never needs as text.
    let name = core::str::from_utf8(name).map_err(|_| Rejection::BadRequest("header name"))?;
    let value = core::str::from_utf8(value).unwrap_or("");
    Ok((name, value))
}

/// A header line (or value) may hold tabs, spaces, visible ASCII and
/// obs-text, not control bytes (RFC 9110 §5.5).
fn check_field_bytes(bytes: &[u8]) -> Result<(), Rejection> {
    let allowed = |b: u8| b == b'\t' || b == b'\r' || (0x20..0x7f).contains(&b) || b >= 0x80;
    if bytes.iter().all(|&b| allowed(b)) {
        Ok(())
    } else {
        Err(Rejection::BadRequest("control byte in a header"))
    }
}

/// The part of a request line that has arrived is refused as soon as it
/// holds a byte no request line may contain (control bytes, non-ASCII) or
/// grows past [`MAX_REQUEST_LINE`].
fn check_partial_request_line(partial: &[u8]) -> Result<(), Rejection> {
    let body = partial.strip_suffix(b"\r").unwrap_or(partial);
    if !body.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Err(Rejection::BadRequest(
            "control or non-ASCII byte in the request line",
        ));
    }
    if body.len() > MAX_REQUEST_LINE {
        return Err(Rejection::UriTooLong);
    }
    Ok(())
}

/// Digits only (RFC 9110 §8.6), no sign, no overflow; a list of equal
/// values (`5, 5`) is accepted as the RFC allows.
fn parse_content_length(value: &str) -> Result<u64, Rejection> {
    let mut length: Option<u64> = None;
    for item in value.split(',') {
        let item = item.trim_matches(|c| c == ' ' || c == '\t');
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::BadRequest("Content-Length is not a number"));
        }
        let this = item
            .parse::<u64>()
            .map_err(|_| Rejection::BadRequest("Content-Length is too large a number"))?;
        if length.is_some_and(|l| l != this) {
            return Err(Rejection::BadRequest("conflicting Content-Length values"));
        }
        length = Some(this);
    }
    length.ok_or(Rejection::BadRequest("empty Content-Length"))
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// `tchar` of RFC 9110 §5.6.2: the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
