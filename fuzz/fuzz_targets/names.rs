//! Resource names: any name either gets a lock file name that stays in the
//! lock directory and maps back to exactly that name, or is refused; any
//! file name maps to at most one resource, without panicking.
#![no_main]

#[path = "../../guest/src/name.rs"]
#[allow(dead_code)]
mod name;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = std::str::from_utf8(data) else {
        return;
    };
    match name::lock_file_name(resource) {
        Ok(file) => {
            assert!(!resource.is_empty());
            assert!(file.len() <= name::MAX_FILE_NAME, "{file}");
            assert!(file.ends_with(name::SUFFIX), "{file}");
            assert!(!file.starts_with('.'), "{file}");
            assert!(!file.contains('/') && !file.contains('\0'), "{file}");
            assert_eq!(name::resource_of_file(&file).as_deref(), Some(resource));
        }
        Err(_) => {
            let encoded = name::encode(resource).len() + name::SUFFIX.len();
            assert!(resource.is_empty() || encoded > name::MAX_FILE_NAME);
        }
    }
    if let Some(resource) = name::resource_of_file(resource) {
        assert!(!resource.is_empty());
    }
    let _ = name::check_client(resource);
});
