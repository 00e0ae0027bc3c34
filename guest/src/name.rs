//! Names: which resource and client names can be stored, and how a resource
//! name becomes a file name in the lock directory.
//!
//! Plain names (`[A-Za-z0-9._,+=@-]`, not starting with `.`) are used as they
//! are, so a directory written by gocept.lockd reads unchanged; every other
//! byte is percent-encoded (`%2F`). The mapping is reversible, and the result
//! never holds `/`, NUL or a leading `.`, so no name can leave the directory
//! or collide with lockd's own files.

/// Every lock file name ends with this.
pub const SUFFIX: &str = ".resource.lock";
/// The longest file name most file systems store (NAME_MAX).
pub const MAX_FILE_NAME: usize = 255;
/// The longest client name, in bytes.
pub const MAX_CLIENT: usize = 1024;

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"._,+=@-".contains(&byte)
}

/// The file name that holds `resource`'s lock, or why there can be none.
pub fn lock_file_name(resource: &str) -> Result<String, String> {
    if resource.is_empty() {
        return Err("resource name is empty".into());
    }
    if let Some(c) = resource.chars().find(|&c| !is_xml_char(c)) {
        return Err(format!(
            "resource name holds U+{:04X}, which XML 1.0 cannot carry",
            u32::from(c)
        ));
    }
    let mut file = encode(resource);
    file.push_str(SUFFIX);
    if file.len() > MAX_FILE_NAME {
        return Err(format!(
            "resource name too long: its lock file name would be {} bytes, the limit is {MAX_FILE_NAME}",
            file.len()
        ));
    }
    Ok(file)
}

/// The resource whose lock `file` holds, if `file` is a lock file: the
/// decoded name for files lockd wrote, and the bare name for files
/// gocept.lockd wrote unencoded (such as `my vm.resource.lock`). lockd's own
/// files (`.lockd*`) are not lock files.
pub fn resource_of_file(file: &str) -> Option<String> {
    let stem = file.strip_suffix(SUFFIX)?;
    if stem.is_empty() || file.starts_with(".lockd") {
        return None;
    }
    Some(decode(stem).unwrap_or_else(|| stem.to_owned()))
}

/// Checks a client name: non-empty, at most [`MAX_CLIENT`] bytes, no NUL,
/// CR or LF (the client is the first line of the lock file), and nothing
/// XML 1.0 cannot carry.
pub fn check_client(client: &str) -> Result<(), String> {
    if client.is_empty() {
        return Err("client name is empty".into());
    }
    if client.len() > MAX_CLIENT {
        return Err(format!(
            "client name too long: {} bytes, the limit is {MAX_CLIENT}",
            client.len()
        ));
    }
    if client.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err("client name holds NUL, CR or LF".into());
    }
    if let Some(c) = client.chars().find(|&c| !is_xml_char(c)) {
        return Err(format!(
            "client name holds U+{:04X}, which XML 1.0 cannot carry",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Whether XML 1.0 can carry `c` (its production `Char`): every name is
/// sent back in XML replies, so no name may hold a C0 control other than
/// TAB, LF and CR, nor U+FFFE or U+FFFF.
pub fn is_xml_char(c: char) -> bool {
    !matches!(c, '\0'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Percent-encodes every byte of `name` that is not plain, and a leading `.`.
pub fn encode(name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        if is_plain(byte) && !(i == 0 && byte == b'.') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xF)] as char);
        }
    }
    out
}

/// The resource name whose encoding is exactly `encoded`, if there is one.
/// Only canonical encodings decode, so `decode(x)` is `Some(n)` if and only
/// if `encode(n) == x`.
pub fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            let must_encode = !is_plain(value) || (i == 0 && value == b'.');
            if !must_encode || hex.iter().any(u8::is_ascii_lowercase) {
                return None;
            }
            out.push(value);
            i += 3;
        } else if is_plain(byte) && !(i == 0 && byte == b'.') {
            out.push(byte);
            i += 1;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_xml_cannot_carry_are_refused() {
        for bad in [
            "a\u{1}b",
            "\u{8}",
            "x\u{b}",
            "\u{1f}",
            "a\u{fffe}",
            "\u{ffff}",
        ] {
            assert!(lock_file_name(bad).is_err(), "{bad:?} as a resource");
            assert!(check_client(bad).is_err(), "{bad:?} as a client");
        }
        for good in ["tab\there", "\u{e000}", "\u{fffd}", "\u{10000}", "\u{7f}"] {
            assert!(lock_file_name(good).is_ok(), "{good:?} as a resource");
            assert!(check_client(good).is_ok(), "{good:?} as a client");
        }
        assert!(
            lock_file_name("cr\rlf\n").is_ok(),
            "CR and LF travel as references"
        );
    }

    #[test]
    fn plain_names_are_unchanged() {
        for name in ["resource1", "vm-42", "a.b_c,d+e=f@g", "X"] {
            assert_eq!(encode(name), name);
            assert_eq!(decode(name).as_deref(), Some(name));
        }
    }

    #[test]
    fn hostile_names_stay_in_the_directory() {
        for name in [
            "../x", "a/b", "/abs", ".hidden", "..", ".", "a\tb", "a b", "ü",
        ] {
            let file = lock_file_name(name).unwrap();
            assert!(!file.contains('/'), "{file}");
            assert!(!file.contains('\0'), "{file}");
            assert!(!file.starts_with('.'), "{file}");
            let stem = file.strip_suffix(SUFFIX).unwrap();
            assert_eq!(decode(stem).as_deref(), Some(name));
        }
        assert_eq!(encode("../x"), "%2E.%2Fx");
        assert_eq!(encode("a/b"), "a%2Fb");
        assert_eq!(encode("ü"), "%C3%BC");
        // Refused as names, but a lock file written by hand may hold one.
        assert_eq!(encode("a\0b"), "a%00b");
        assert_eq!(
            resource_of_file("a%00b.resource.lock").as_deref(),
            Some("a\0b")
        );
    }

    #[test]
    fn only_canonical_encodings_decode() {
        for bad in ["%2f", "%41", "%2", "%zz", "a b", ".x", "", "%2E%2"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_names_longer_than_255_bytes_are_refused() {
        let longest = "a".repeat(MAX_FILE_NAME - SUFFIX.len());
        assert_eq!(lock_file_name(&longest).unwrap().len(), MAX_FILE_NAME);
        assert!(lock_file_name(&format!("{longest}a")).is_err());
        // 86 bytes of `/` encode to 258 bytes.
        assert!(lock_file_name(&"/".repeat(86)).is_err());
        assert!(lock_file_name("").is_err());
    }

    #[test]
    fn lock_files_map_back_to_their_resource() {
        for name in ["plain", "a/b", "../x", ".hidden", "ü", "a b", "100%"] {
            let file = lock_file_name(name).unwrap();
            assert_eq!(resource_of_file(&file).as_deref(), Some(name));
        }
        // Written by gocept.lockd, unencoded.
        assert_eq!(
            resource_of_file("my vm.resource.lock").as_deref(),
            Some("my vm")
        );
        assert_eq!(resource_of_file(".x.resource.lock").as_deref(), Some(".x"));
        for not_a_lock in [
            "notes.txt",
            ".resource.lock",
            ".lockd-write.tmp",
            ".lockd.x.resource.lock",
        ] {
            assert_eq!(resource_of_file(not_a_lock), None, "{not_a_lock}");
        }
    }

    #[test]
    fn client_names() {
        assert!(check_client("client1").is_ok());
        assert!(check_client("").is_err());
        assert!(check_client("a\nb").is_err());
        assert!(check_client("a\rb").is_err());
        assert!(check_client("a\0b").is_err());
        assert!(check_client(&"c".repeat(MAX_CLIENT)).is_ok());
        assert!(check_client(&"c".repeat(MAX_CLIENT + 1)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_name_stays_in_the_directory_and_maps_back(resource in any::<String>()) {
            match lock_file_name(&resource) {
                Ok(file) => {
                    prop_assert!(file.len() <= MAX_FILE_NAME);
                    prop_assert!(file.ends_with(SUFFIX));
                    prop_assert!(!file.starts_with('.'));
                    prop_assert!(!file.contains('/') && !file.contains('\0'));
                    prop_assert_eq!(resource_of_file(&file), Some(resource));
                }
                Err(_) => prop_assert!(
                    resource.is_empty() || encode(&resource).len() + SUFFIX.len() > MAX_FILE_NAME
                ),
            }
        }

        #[test]
        fn hostile_names_too(resource in "[./%a\\\\\u{0}-\u{1f}ü]{1,40}") {
            match lock_file_name(&resource) {
                Ok(file) => {
                    prop_assert!(!file.starts_with('.') && !file.contains('/'));
                    prop_assert_eq!(resource_of_file(&file), Some(resource));
                }
                Err(_) => prop_assert!(!resource.chars().all(is_xml_char)),
            }
        }

        #[test]
        fn decoding_is_canonical(encoded in "[A-Za-z0-9.%_-]{1,30}") {
            if let Some(name) = decode(&encoded) {
                prop_assert_eq!(encode(&name), encoded);
            }
        }
    }
}
