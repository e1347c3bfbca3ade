//! The hostfile of a cluster: one `host:port` line per process, in process order.

use std::path::Path;

use super::ClusterError;

/// Reads the addresses of the first `processes` processes from a hostfile.
///
/// Blank lines and lines starting with `#` are ignored. Each other line is one address,
/// `host:port` or `[ipv6]:port`. The k-th address line (from 0) belongs to process k: it
/// listens there, and the other processes connect to it there. Lines beyond
/// `processes` are not used, as in timely's own hostfile handling.
pub fn read_hostfile(path: &Path, processes: usize) -> Result<Vec<String>, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|error| ClusterError::HostfileUnreadable {
        path: path.to_path_buf(),
        error,
    })?;
    parse_hostfile(&text, processes).map_err(|message| ClusterError::InvalidHostfile {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the text of a hostfile as [`read_hostfile`] does. Errors name the line.
pub fn parse_hostfile(text: &str, processes: usize) -> Result<Vec<String>, String> {
    let mut addresses: Vec<(usize, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let address = line.trim();
        if address.is_empty() || address.starts_with('#') {
            continue;
        }
        check_address(address).map_err(|reason| format!("line {line_number}: {reason}"))?;
        if let Some((earlier, _)) = addresses.iter().find(|(_, known)| known == address) {
            return Err(format!(
                "line {line_number}: address {address} is also on line {earlier}; each process \
                 needs its own port"
            ));
        }
        addresses.push((line_number, address.to_string()));
        if addresses.len() == processes {
            break;
        }
    }
    if addresses.len() < processes {
        return Err(format!(
            "it lists {} addresses, but --processes is {processes}; write one host:port line \
             per process",
            addresses.len()
        ));
    }
    Ok(addresses.into_iter().map(|(_, address)| address).collect())
}

/// Checks the form `host:port` without resolving the host name.
fn check_address(address: &str) -> Result<(), String> {
    if address.contains(char::is_whitespace) {
        return Err(format!(
            "invalid address {address:?}: expected one host:port per line"
        ));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "invalid address {address:?}: expected host:port, e.g. 127.0.0.1:2101"
        ));
    };
    let host_is_valid = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    if !host_is_valid {
        return Err(format!(
            "invalid host in {address:?}: expected a name, an IPv4 address or [IPv6]"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!(
            "invalid port in {address:?}: expected a number from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_extra_lines() {
        let text = "# cluster\n\n127.0.0.1:2101\n  [::1]:2102  \nhost-c:2103\n";
        let addresses = parse_hostfile(text, 2).unwrap();
        assert_eq!(addresses, ["127.0.0.1:2101", "[::1]:2102"]);
    }

    #[test]
    fn too_few_addresses() {
        let error = parse_hostfile("127.0.0.1:2101\n", 2).unwrap_err();
        assert!(error.contains("lists 1 addresses"), "{error}");
        assert!(error.contains("--processes is 2"), "{error}");
    }

    #[test]
    fn invalid_lines_are_named() {
        let cases = [
            ("127.0.0.1\n", "line 1: invalid address"),
            ("a:1\nb:0\n", "line 2: invalid port"),
            ("a:1\nb:http\n", "line 2: invalid port"),
            ("::1:80\n", "line 1: invalid host"),
            ("[nope]:80\n", "line 1: invalid host"),
            (":80\n", "line 1: invalid host"),
            ("a:1 b:2\n", "line 1: invalid address"),
            ("a:1\n\na:1\n", "line 3: address a:1 is also on line 1"),
        ];
        for (text, expected) in cases {
            let error = parse_hostfile(text, 2).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }
}
