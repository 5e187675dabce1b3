//! The hosts file (`/etc/hosts`, hosts(5)), read the way the system's
//! resolver reads it: again on every lookup (an entry added while the
//! proxy runs counts at once), every line naming the name (as its
//! canonical name or an alias, in any case) giving one address, IPv4 and
//! IPv6 alike, in file order.
//!
//! A name the file holds is answered from it alone, as `getaddrinfo` does
//! with `hosts: files dns`: DNS is not asked, so a slow or absent DNS
//! server cannot delay or hide it.

use std::{
    io::{self, Read},
    net::IpAddr,
    path::{Path, PathBuf},
};

/// Where the system keeps it.
pub const PATH: &str = "/etc/hosts";

/// The most of the file read (a larger one is read that far, and the rest
/// ignored with a warning): it is the machine's own, but memory stays
/// bounded all the same.
pub const MAX_SIZE: u64 = 1 << 20;

/// The addresses `name` has in the hosts file at `path`, in file order
/// (none when it has no entry, or there is no file). Reading happens on
/// the blocking pool.
pub async fn lookup(path: impl Into<PathBuf>, name: &str) -> io::Result<Vec<IpAddr>> {
    let path = path.into();
    let text = tokio::task::spawn_blocking(move || read(&path))
        .await
        .map_err(io::Error::other)??;
    Ok(find(&text, name))
}

fn read(path: &Path) -> io::Result<String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // No file: no entries, as for the system's resolver.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIZE {
        tracing::warn!(path = %path.display(), max = MAX_SIZE, "hosts file too large; reading only its beginning");
        bytes.truncate(MAX_SIZE as usize);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The addresses `text` (a hosts file) gives `name`, in order, without
/// repeats. Names compare without case and without a final dot; lines
/// whose address does not parse are skipped.
pub fn find(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut found = Vec::new();
    if name.is_empty() {
        return found;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if fields.any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
            && !found.contains(&ip)
        {
            found.push(ip);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "\
# a comment
127.0.0.1\tlocalhost
10.1.2.3   api.internal api   # the API
::1 localhost ip6-localhost
fd00::3 api.internal
not-an-ip api.internal
10.1.2.3 API.Internal.
10.9.9.9 other # api.internal
";

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn names_and_aliases_in_any_case_give_every_address_in_order() {
        assert_eq!(find(HOSTS, "api.internal"), ips(&["10.1.2.3", "fd00::3"]));
        assert_eq!(find(HOSTS, "API.INTERNAL."), ips(&["10.1.2.3", "fd00::3"]));
        assert_eq!(find(HOSTS, "api"), ips(&["10.1.2.3"]));
        assert_eq!(find(HOSTS, "localhost"), ips(&["127.0.0.1", "::1"]));
        // Commented out, or only a prefix.
        assert!(find(HOSTS, "the").is_empty());
        assert!(find(HOSTS, "api.int").is_empty());
        assert!(find(HOSTS, "").is_empty());
        assert!(find("", "api").is_empty());
    }

    #[tokio::test]
    async fn the_file_is_read_again_on_every_lookup() {
        let dir = std::env::temp_dir().join(format!("linnet-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "10.0.0.1 one\n").unwrap();
        assert_eq!(lookup(&path, "one").await.unwrap(), ips(&["10.0.0.1"]));
        assert!(lookup(&path, "two").await.unwrap().is_empty());
        std::fs::write(&path, "10.0.0.1 one\n10.0.0.2 two\n").unwrap();
        assert_eq!(lookup(&path, "two").await.unwrap(), ips(&["10.0.0.2"]));
        // No file: no entries, not an error.
        assert!(lookup(dir.join("absent"), "one").await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
