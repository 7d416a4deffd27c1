//! The few system calls the load generator makes outside its runtime: the monotonic clock
//! shared by all processes, the open-file limit, a socket option, and a process's memory.

use std::io;
use std::os::fd::AsRawFd;

/// Nanoseconds of `CLOCK_MONOTONIC`. The clock is system-wide, so worker processes and their
/// parent agree on it: a send time written by one process is a valid instant in another.
pub fn now_nanos() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec and CLOCK_MONOTONIC is always available
    // on Linux, so the call only writes into it.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    assert_eq!(result, 0, "CLOCK_MONOTONIC is unavailable");
    let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
    seconds * 1_000_000_000 + nanos
}

/// Sleeps until the monotonic instant `nanos` (returns at once when it has passed).
pub async fn sleep_until_nanos(nanos: u64) {
    let now = now_nanos();
    if nanos > now {
        tokio::time::sleep(std::time::Duration::from_nanos(nanos - now)).await;
    }
}

/// Raises the soft limit of open files to the hard limit and returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit whose soft value does not pass its hard value.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Lets the kernel pick the source port at `connect` rather than at `bind`, so one source
/// address serves a full port range per destination instead of one range in all.
pub fn set_bind_address_no_port(socket: &impl AsRawFd) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: the descriptor is an open socket owned by `socket`, and the option value points
    // to a live c_int whose size is passed with it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Resident memory of process `pid` in bytes, from `/proc/PID/status` (`VmRSS`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: &str, expected: Option<u64>) {
        assert_eq!(parse_vm_rss(status), expected, "{status:?}");
    }

    #[test]
    fn vm_rss_lines() {
        check(
            "Name:\tx\nVmRSS:\t    1234 kB\nVmData: 1 kB\n",
            Some(1234 * 1024),
        );
        check("VmRSS: 0 kB", Some(0));
        check("VmHWM: 5 kB\n", None);
        check("VmRSS: 12 MB\n", None);
        check("VmRSS: x kB\n", None);
    }

    #[test]
    fn own_rss_is_positive() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn the_clock_moves_forward() {
        let first = now_nanos();
        let second = now_nanos();
        assert!(second >= first);
        assert!(first > 0);
    }
}
