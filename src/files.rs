//! Reading the files an operator or an autoscaler hands ringlb (the config,
//! targets files) without letting what sits at the path block or flood the
//! control plane.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Reads `path` as UTF-8 text if it is a regular file of at most `max` bytes.
/// The open never blocks (`O_NONBLOCK`: a FIFO with no writer would otherwise
/// wait forever), and anything but a regular file is refused before a byte is
/// read. `what` names the file in messages ("targets file").
pub fn read_regular(path: &Path, max: u64, what: &str) -> Result<String, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let is = if kind.is_dir() {
            "a folder"
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
            "a FIFO"
        } else {
            "a device or socket"
        };
        return Err(format!(
            "cannot read {what}: it is {is}, not a regular file"
        ));
    }
    let limit = if max >= 1 << 20 && max.is_multiple_of(1 << 20) {
        format!("{} MiB", max >> 20)
    } else {
        format!("{max} bytes")
    };
    let too_big = || format!("cannot read {what}: larger than {limit}");
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big()); // it grew while being read
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "cannot read {what}: not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Replaces the file at `path` with `bytes`, so a reader sees the old
/// content or the new, never half: a new file beside it (a random name,
/// created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so whatever another user
/// planted at a temp path, a link to a file of theirs or a FIFO, is never
/// written through or waited on), synced, then renamed over `path`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace_via(path, bytes, mode, (0..8).map(|_| temp_path(path, random())))
}

/// [`replace`], trying the temp paths `candidates` in turn until one can be
/// created afresh.
fn replace_via(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    candidates: impl Iterator<Item = PathBuf>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut last = None;
    for tmp in candidates {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        let mut file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _gone_or_never_made = std::fs::remove_file(&tmp);
        }
        return written;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temp path to try")))
}

/// `.NAME.XXXXXXXXXXXXXXXX.tmp` beside `path`, on the same filesystem, so
/// the rename is atomic.
fn temp_path(path: &Path, nonce: u64) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{nonce:016x}.tmp"))
}

/// 64 random bits from the kernel (`getrandom(2)`), or the time and pid if
/// it has none to give: a temp name nobody can guess in advance.
fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the array.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(bytes);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// `--address-file`: writes `body` (one JSON line) over `path` by
/// [`replace`], so a reader never sees half. A failure is logged, not
/// fatal: the addresses are a convenience.
pub fn write_address_file(path: &Path, body: &serde_json::Value) {
    if let Err(e) = replace(path, format!("{body}\n").as_bytes(), 0o644) {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the address file");
    }
}

/// At most [`EXCERPT_CHARS`] characters of `text`, for an error that quotes
/// what it refuses: a 5 MiB line is named by its start and its length.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// `text` quoted as an error quotes offending input: an [`excerpt`] of it,
/// in double quotes.
pub fn quoted(text: &str) -> String {
    format!("{:?}", excerpt(text))
}

/// Characters of offending input an error quotes.
pub const EXCERPT_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_fifos_devices_folders_and_huge_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cases = [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a device"),
            (dir.path(), "a folder"),
        ];
        for (path, words) in cases {
            let e = read_regular(path, 1 << 20, "targets file").unwrap_err();
            assert!(e.contains(words), "{path:?}: {e}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let e = read_regular(&big, 1024, "targets file").unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        assert_eq!(read_regular(&big, 4096, "x").unwrap().len(), 2048);
    }
}

#[cfg(test)]
mod replace_tests {
    use super::*;

    /// What another user could plant at a temp path: a link to a file of
    /// theirs (or of root's) and a FIFO. Neither is written through nor
    /// waited on; the file ends up a regular file of its own.
    #[test]
    fn replace_never_writes_through_or_waits_on_what_sits_at_a_temp_path() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("web.txt");
        let link = temp_path(&path, 1);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let fifo = temp_path(&path, 2);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let started = std::time::Instant::now();
        let names = [link.clone(), fifo.clone(), temp_path(&path, 3)].into_iter();
        replace_via(&path, b"127.0.0.1:6400\n", 0o644, names).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "waited on the FIFO"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "secret\n",
            "the link was followed"
        );
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "web.txt is a regular file, not a planted link"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:6400\n");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        // Every candidate planted: an error, and nothing written.
        let e = replace_via(&path, b"x\n", 0o644, [link, fifo].into_iter()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:6400\n");
    }

    #[test]
    fn temp_names_are_random_and_beside_the_file() {
        let p = Path::new("/etc/ringlb/targets/web.txt");
        let (a, b) = (temp_path(p, random()), temp_path(p, random()));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
        assert!(
            a.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".web.txt.")
        );
    }

    #[test]
    fn excerpts_name_a_long_input_by_its_start_and_length() {
        assert_eq!(excerpt("short"), "short");
        let long = "x".repeat(5 << 20);
        let e = excerpt(&long);
        assert!(e.len() < 100, "{}", e.len());
        assert!(e.ends_with("... (5242880 bytes)"), "{e}");
    }
}
