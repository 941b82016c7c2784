//! The bearer token for `--listen` TCP access (`state/token`, 0600, made on first use) and the
//! checks that go with it.

use std::io::{Read, Write};
use std::path::Path;

use crate::state_dir::{Access, StateDir};

const TOKEN_FILE: &str = "token";

/// Reads the token, or makes one (32 bytes from the kernel's CSPRNG, hex). The file is read
/// without following a link and must be the user's own (the state dir's check at start refused
/// one that others could read or write); a new one is written whole, then renamed into place.
pub fn load_or_create(state_dir: &Path) -> std::io::Result<String> {
    let dir = StateDir::open(state_dir).map_err(std::io::Error::other)?;
    match dir.open_file(TOKEN_FILE, Access::Read) {
        Ok(mut file) => {
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let token = text.trim().to_string();
            if token.len() >= 32 {
                return Ok(token);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = dir.open_file(".token.new", Access::Replace)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    dir.rename(".token.new", TOKEN_FILE)?;
    Ok(token)
}

/// Compares in time independent of where the first difference is.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && !a.is_empty() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A browser's `Origin` (`scheme://host[:port]`) naming a loopback host. `null` (a sandboxed
/// page, a file) and anything else are not.
pub fn is_loopback_origin(origin: &str) -> bool {
    origin.split_once("://").is_some_and(|(scheme, host)| {
        matches!(scheme, "http" | "https") && !host.contains('/') && is_loopback_host(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins() {
        for ok in ["http://localhost:8080", "http://127.0.0.1:7700", "https://[::1]:1"] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in ["null", "http://evil.example", "http://127.0.0.1.evil.example", "file://", "localhost"] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for ok in ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:9", "127.1.2.3:80", "[::1]:8080", "[::1]"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "10.0.0.1:80", "", "localhost.evil.example"] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd") && !matches("abc", "ab") && !matches("", ""));
    }

    #[test]
    fn token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::state_dir::private_tempdir();
        let first = load_or_create(dir.path()).expect("token");
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(dir.path()).expect("token"), first);
        let mode = std::fs::metadata(dir.path().join("token")).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
