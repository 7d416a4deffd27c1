//! The Redis harness the cluster tests stand on: a real `redis-server` that answers RESP
//! commands, keeps what it acknowledged across a SIGKILL (its append-only file), and gives
//! every test a server of its own.

use std::net::TcpStream;

use switchboard_tests::redis::RedisServer;

#[test]
fn a_key_set_survives_a_sigkill_and_a_restart() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
    assert_eq!(redis.command(&["SET", "sb:key", "kept"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "sb:key"]), "$4\r\nkept\r\n");
    assert_eq!(redis.command(&["GET", "sb:missing"]), "$-1\r\n");
    assert_eq!(
        redis.command(&["ZADD", "sb:set", "1", "a", "2", "b"]),
        ":2\r\n"
    );
    assert_eq!(
        redis.command(&["ZRANGE", "sb:set", "0", "-1"]),
        "*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
    assert!(redis.command(&["NOSUCHCOMMAND"]).starts_with("-ERR"));

    let pid = redis.pid().expect("running");
    redis.kill();
    assert_eq!(redis.pid(), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the killed server was reaped"
    );
    assert!(
        TcpStream::connect(redis.addr()).is_err(),
        "nothing listens on the port of a killed server"
    );

    redis.restart();
    assert_ne!(redis.pid(), Some(pid));
    assert_eq!(redis.command(&["GET", "sb:key"]), "$4\r\nkept\r\n");
    assert_eq!(redis.command(&["ZCARD", "sb:set"]), ":2\r\n");
    // Two starts in one log: the second one loaded the append-only file.
    assert!(
        redis.log().contains("DB loaded from append only file"),
        "{}",
        redis.log()
    );
}

#[test]
fn two_servers_at_once_are_two_servers() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    assert_ne!(first.port(), second.port());
    assert_ne!(first.dir(), second.dir());
    assert_eq!(first.command(&["SET", "sb:where", "first"]), "+OK\r\n");
    assert_eq!(second.command(&["GET", "sb:where"]), "$-1\r\n");
    assert_eq!(first.command(&["GET", "sb:where"]), "$5\r\nfirst\r\n");
}

#[test]
fn a_dropped_server_is_gone() {
    let redis = RedisServer::start();
    let (pid, addr) = (redis.pid().expect("running"), redis.addr());
    drop(redis);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(TcpStream::connect(addr).is_err());
}
