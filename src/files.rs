//! Reading the files an operator or an autoscaler hands ringlb (the config,
//! targets files) without letting what sits at the path block or flood the
//! control plane.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// `--address-file`: writes `body` (one JSON line) to a temporary file
/// beside `path` and renames it over `path`, so a reader never sees half.
/// A failure is logged, not fatal: the addresses are a convenience.
pub fn write_address_file(path: &Path, body: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, format!("{body}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the address file");
    }
}

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
