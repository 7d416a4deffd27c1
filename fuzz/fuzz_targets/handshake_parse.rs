//! Fuzzes the upgrade request parser with arbitrary bytes and checks what it promises: no
//! panic, a consumed length within the input, a result that depends only on the bytes it
//! consumed, and answers that parse as HTTP with the right status and accept key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::handshake::{HandshakeConfig, accept_key, parse_request, switching_protocols};

fuzz_target!(|data: &[u8]| {
    // The defaults, and small limits that inputs reach easily.
    let small = HandshakeConfig {
        request_bytes_max: 512,
        headers_count_max: 8,
        token_bytes_max: 32,
        path: "/ws".to_owned(),
        echo_path: Some("/echo".to_owned()),
    };
    for cfg in [HandshakeConfig::default(), small] {
        check(data, &cfg);
    }
});

fn check(data: &[u8], cfg: &HandshakeConfig) {
    match parse_request(data, cfg) {
        Ok(None) => assert!(data.len() < cfg.request_bytes_max),
        Err(error) => {
            let answer = error.response();
            let (status, _, head_bytes) = parse_response(&answer);
            assert_eq!(status, error.status());
            assert!(matches!(status, 400 | 404 | 426 | 431));
            assert_eq!(answer[head_bytes..], *format!("{error}\n").as_bytes());
        }
        Ok(Some((request, consumed))) => {
            assert!(consumed > 0 && consumed <= data.len());
            assert!(consumed <= cfg.request_bytes_max);
            let again = parse_request(&data[..consumed], cfg);
            assert_eq!(again, Ok(Some((request.clone(), consumed))));

            // The key, as found by httparse itself in the consumed head.
            let mut headers = vec![httparse::EMPTY_HEADER; cfg.headers_count_max];
            let mut parsed = httparse::Request::new(&mut headers);
            assert_eq!(
                parsed.parse(&data[..consumed]),
                Ok(httparse::Status::Complete(consumed))
            );
            let sent_key = parsed
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("Sec-WebSocket-Key"))
                .map(|header| header.value.trim_ascii())
                .expect("an accepted request has a key");
            assert_eq!(sent_key, request.key().as_bytes());

            let answer = switching_protocols(&request);
            let (status, answer_headers, head_bytes) = parse_response(&answer);
            assert_eq!(status, 101);
            assert_eq!(head_bytes, answer.len());
            let accept = answer_headers
                .iter()
                .find(|(name, _)| name == "Sec-WebSocket-Accept")
                .map(|(_, value)| value.as_str());
            assert_eq!(accept, Some(accept_key(request.key()).as_str()));
            let protocol = answer_headers
                .iter()
                .find(|(name, _)| name == "Sec-WebSocket-Protocol")
                .map(|(_, value)| value.as_str());
            assert_eq!(protocol, request.subprotocol());
        }
    }
}

/// The status, headers and head length of a complete HTTP response.
fn parse_response(answer: &[u8]) -> (u16, Vec<(String, String)>, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_bytes = match response.parse(answer) {
        Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
        other => panic!("answer is no complete HTTP response: {other:?}"),
    };
    let headers = response
        .headers
        .iter()
        .map(|header| {
            let value = String::from_utf8(header.value.to_vec()).expect("answer headers are text");
            (header.name.to_owned(), value)
        })
        .collect();
    (response.code.expect("complete"), headers, head_bytes)
}
