//! Tar archives, plain or gzipped: each entry handed to the [`Tree`], and the
//! decompressed stream held to what the entries account for.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tar::EntryType;

use super::UnpackError;
use super::name::EntryPath;
use super::tree::Tree;

/// What the stream may carry before the first entry, beyond the entries' own
/// allowance: the end-of-archive blocks, a first long name, some slack.
const BASE_ALLOWANCE: u64 = 1 << 20;
/// What the stream may carry for each entry besides file contents: its header, the
/// padding of its data to 512 bytes, PAX records and GNU long names and links. A
/// plain entry needs 1 KiB at most, one with a long name and link of 4 KiB each about
/// 11 KiB; the allowance adds up across entries, so the usual short ones leave room
/// for the few long ones.
const ENTRY_ALLOWANCE: u64 = 8 << 10;

/// Unpacks the tar stream `reader` into `tree`.
pub(super) fn unpack(reader: impl Read, tree: &mut Tree) -> Result<(), UnpackError> {
    let gauge = Rc::new(Gauge {
        allowed: Cell::new(BASE_ALLOWANCE),
        exceeded: Cell::new(false),
    });
    let mut archive = tar::Archive::new(Budget {
        inner: reader,
        read: 0,
        gauge: Rc::clone(&gauge),
    });
    let unpacked = unpack_entries(&mut archive, tree, &gauge);
    if gauge.exceeded.get() {
        // Whatever error the tar reader made of it, this is why it stopped.
        return Err(UnpackError::TooLarge {
            limit: tree.limits().max_total_bytes,
        });
    }
    unpacked
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    tree: &mut Tree,
    gauge: &Gauge,
) -> Result<(), UnpackError> {
    for entry in archive.entries().map_err(|error| tree.corrupt(error))? {
        let mut entry = entry.map_err(|error| tree.corrupt(error))?;
        tree.count_entry()?;
        let kind = entry.header().entry_type();
        // A file's data is read as it is written out, and counted there; so it may come
        // through, up to the limit. Anything else must fit in the allowance.
        let data = if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let room = tree.limits().max_total_bytes.saturating_sub(tree.bytes());
            entry.size().min(room.saturating_add(1))
        } else {
            0
        };
        gauge.allowed.set(
            BASE_ALLOWANCE
                .saturating_add(tree.entries().saturating_mul(ENTRY_ALLOWANCE))
                .saturating_add(tree.bytes())
                .saturating_add(data),
        );
        if kind.is_pax_global_extensions() {
            // Defaults for the entries' metadata; nothing this reader uses.
            continue;
        }
        let path = EntryPath::new(&entry.path_bytes())?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let header = entry.header();
                let mode = header.mode().map_err(|error| tree.corrupt(error))?;
                let mtime = header
                    .mtime()
                    .ok()
                    .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
                tree.file(&path, mode, mtime, &mut entry)?;
            }
            EntryType::Directory => tree.dir(&path)?,
            EntryType::Symlink | EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    return Err(tree.corrupt(io::Error::other(format!(
                        "link entry {:?} has no target",
                        path.name
                    ))));
                };
                if kind == EntryType::Symlink {
                    tree.symlink(&path, &target)?;
                } else {
                    tree.hard_link(&path, &target)?;
                }
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    entry: path.name,
                    kind: kind_name(other),
                });
            }
        }
    }
    Ok(())
}

/// What an entry type that is not unpacked is, for a message.
fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        _ => match kind.as_byte() {
            b'D' => "GNU directory dump",
            b'M' => "GNU multi-volume continuation",
            b'V' => "GNU volume label",
            _ => "tar entry of an unknown type",
        },
    }
}

/// How much of the decompressed stream the unpacking loop allows, and whether the
/// stream went past it.
#[derive(Debug)]
struct Gauge {
    allowed: Cell<u64>,
    exceeded: Cell<bool>,
}

/// The decompressed stream, cut off where the [`Gauge`] says: without it, a header
/// could make the tar reader decompress (and, for a long name, hold in memory) any
/// amount of data that no file ever receives.
struct Budget<R> {
    inner: R,
    read: u64,
    gauge: Rc<Gauge>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.gauge.allowed.get().saturating_sub(self.read);
        if room == 0 && !buf.is_empty() {
            self.gauge.exceeded.set(true);
            return Err(io::Error::other(
                "the archive carries more data than its entries account for",
            ));
        }
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.read += read as u64;
        Ok(read)
    }
}
