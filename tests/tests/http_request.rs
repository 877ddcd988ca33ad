//! The kernel's HTTP request-head parser (`kernel/src/net/http_request.rs`),
//! on the host: the file is included as it is (it uses only `core`), so
//! these tests run the code the kernel runs.
//!
//! Each test feeds bytes a client could send and checks the verdict:
//! complete (with the parts the server routes on), incomplete (wait), or
//! refused with the status the module docs promise. Every prefix of a valid
//! request must be `Incomplete`, never an error: a request may arrive one
//! byte per segment.

#[path = "../../kernel/src/net/http_request.rs"]
#[allow(dead_code, reason = "the kernel uses every item; the tests a subset")]
mod http_request;

use http_request::{
    parse, Parsed, Rejection, Request, Version, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE,
};

fn complete(bytes: &[u8]) -> Request<'_> {
    match parse(bytes) {
        Parsed::Complete(request) => request,
        other => panic!(
            "{:?}: expected a complete request, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

fn status(bytes: &[u8]) -> u16 {
    match parse(bytes) {
        Parsed::Rejected(rejection) => rejection.status(),
        other => panic!(
            "{:?}: expected a refusal, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

#[test]
fn a_browser_request_is_complete_with_its_path_query_host_and_length() {
    let bytes = b"GET /queues?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n";
    let request = complete(bytes);
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/queues");
    assert_eq!(request.query, Some("x=1"));
    assert_eq!(request.version, Version::Http11);
    assert_eq!(request.host, Some("127.0.0.1:8080"));
    assert_eq!(request.head_len, bytes.len());
}

#[test]
fn every_prefix_of_a_valid_request_is_incomplete_not_an_error() {
    let bytes = b"\r\nHEAD /index.html HTTP/1.1\r\nHost: guest\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n";
    for end in 0..bytes.len() {
        assert_eq!(
            parse(&bytes[..end]),
            Parsed::Incomplete,
            "prefix of {end} bytes"
        );
    }
    let request = complete(bytes);
    assert_eq!((request.method, request.path), ("HEAD", "/index.html"));
}

#[test]
fn bare_lf_line_ends_and_http_1_0_without_host_are_accepted() {
    let request = complete(b"GET / HTTP/1.0\n\n");
    assert_eq!(request.version, Version::Http10);
    assert_eq!(request.host, None);
    assert_eq!(request.head_len, 16);
}

#[test]
fn bytes_after_the_head_are_left_alone() {
    let bytes = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n";
    assert_eq!(complete(bytes).head_len, bytes.len() - 17);
}

#[test]
fn an_absolute_form_target_is_reduced_to_its_path() {
    assert_eq!(
        complete(b"GET http://guest:80/api/queues?a HTTP/1.1\r\nHost: guest\r\n\r\n").path,
        "/api/queues"
    );
    assert_eq!(
        complete(b"GET HTTP://guest HTTP/1.1\r\nHost: guest\r\n\r\n").path,
        "/"
    );
    assert_eq!(status(b"GET http:///x HTTP/1.1\r\nHost: g\r\n\r\n"), 400);
}

#[test]
fn malformed_request_lines_are_400() {
    for bytes in [
        &b"GET\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1\r\nHost: h\r\n\r\n",
        b"GET / http/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\r\n\r\n",
    ] {
        assert_eq!(status(bytes), 400, "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn garbage_is_refused_at_its_first_bad_byte_without_waiting_for_a_line_end() {
    assert_eq!(
        status(b"\x16\x03\x01\x02\x00\x01"),
        400,
        "a TLS ClientHello"
    );
    assert_eq!(status(b"GET /\x00"), 400);
    assert_eq!(status(b"GET /caf\xc3\xa9"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\rX"), 400, "a bare CR");
}

#[test]
fn malformed_header_fields_are_400() {
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost h\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\n: h\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 1\r\n\r\n",
    ] {
        assert_eq!(status(bytes), 400, "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn a_zero_length_body_is_fine_and_any_other_body_is_413() {
    complete(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\ncontent-length: 0, 0\r\n\r\n");
    assert_eq!(
        status(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"),
        413
    );
    assert_eq!(
        status(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
        501
    );
}

#[test]
fn other_http_versions_are_505() {
    assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
    assert_eq!(status(b"GET / HTTP/0.9\r\n\r\n"), 505);
    assert_eq!(
        complete(b"GET / HTTP/1.9\r\nHost: h\r\n\r\n").version,
        Version::Http11
    );
}

#[test]
fn a_request_line_longer_than_the_limit_is_414_even_before_it_ends() {
    let long_path = "a".repeat(MAX_REQUEST_LINE);
    let line = format!("GET /{long_path} HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status(line.as_bytes()), 414);
    let unfinished = format!("GET /{long_path}");
    assert_eq!(status(unfinished.as_bytes()), 414);
    // Just under the limit is fine.
    let path = "a".repeat(MAX_REQUEST_LINE - "GET / HTTP/1.1".len());
    complete(format!("GET /{path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
}

#[test]
fn a_head_past_the_limit_is_431_whether_or_not_it_ended() {
    let filler = format!("X-Filler: {}\r\n", "f".repeat(1000));
    let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    while head.len() <= MAX_HEAD {
        assert_eq!(parse(head.as_bytes()), Parsed::Incomplete);
        head.push_str(&filler);
    }
    assert_eq!(status(head.as_bytes()), 431, "unfinished");
    head.push_str("\r\n");
    assert_eq!(status(head.as_bytes()), 431, "finished");
    // One endless header line is refused the same way.
    let endless = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
    assert_eq!(status(endless.as_bytes()), 431);
}

#[test]
fn too_many_fields_is_431() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 1..MAX_HEADERS {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    complete(format!("{head}\r\n").as_bytes());
    head.push_str("X-One-Too-Many: v\r\n");
    assert_eq!(status(head.as_bytes()), 431);
}

#[test]
fn every_rejection_has_a_4xx_or_5xx_status_and_a_detail() {
    for rejection in [
        Rejection::BadRequest("why"),
        Rejection::ContentTooLarge,
        Rejection::UriTooLong,
        Rejection::HeadersTooLarge,
        Rejection::NotImplemented,
        Rejection::VersionNotSupported,
    ] {
        assert!((400..600).contains(&rejection.status()), "{rejection:?}");
        assert!(!rejection.detail().is_empty());
    }
}

/// Bytes from a small deterministic generator: whatever they are, the
/// parser answers without panicking, and a `Complete` head lies within them.
#[test]
fn arbitrary_bytes_never_panic_and_a_complete_head_lies_within_the_input() {
    let alphabet = b"GET /HTTP1.0\r\n: Host\x00\x7f\xffab?";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| alphabet[((state >> (i % 50)) as usize + i * 7) % alphabet.len()])
            .collect();
        if let Parsed::Complete(request) = parse(&bytes) {
            assert!(request.head_len <= bytes.len());
            assert!(request.path.starts_with('/'));
        }
    }
}
