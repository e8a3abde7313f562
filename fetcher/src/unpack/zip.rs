//! Zip archives: each entry handed to the [`Tree`]. A symlink is an entry whose Unix
//! mode says so, its target the entry's data.

use std::io::{self, Read, Seek};
use std::time::{Duration, SystemTime};

use zip::ZipArchive;
use zip::read::ZipFile;

use super::UnpackError;
use super::name::EntryPath;
use super::tree::Tree;

/// The longest symlink target Linux accepts (`PATH_MAX`, less its NUL).
const MAX_TARGET: u64 = 4095;

// The file type bits of a Unix mode, as zip's "external attributes" carry them.
const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

/// Unpacks the zip archive `reader` into `tree`.
pub(super) fn unpack(reader: impl Read + Seek, tree: &mut Tree) -> Result<(), UnpackError> {
    let mut archive = ZipArchive::new(reader).map_err(|error| tree.corrupt(error.into()))?;
    // The central directory says how many entries there are: no need to write any of
    // them to find out there are too many.
    if archive.len() as u64 > tree.limits().max_entries {
        return Err(UnpackError::TooManyEntries {
            limit: tree.limits().max_entries,
        });
    }
    for index in 0..archive.len() {
        tree.count_entry()?;
        let mut file = archive
            .by_index(index)
            .map_err(|error| tree.corrupt(error.into()))?;
        let path = EntryPath::new(
            file.name()
                .map_err(|error| tree.corrupt(error.into()))?
                .as_bytes(),
        )?;
        let mode = file.unix_mode();
        // A name ending in `/` is a directory whatever the mode says, as zip has it.
        let kind = if file.is_dir() {
            Some(S_IFDIR)
        } else {
            mode.map(|mode| mode & S_IFMT)
        };
        match kind {
            Some(S_IFDIR) => tree.dir(&path)?,
            None | Some(0 | S_IFREG) => {
                let mtime = mtime(&file);
                let mode = mode.unwrap_or(0o644);
                tree.file(&path, mode, mtime, &mut file)?;
            }
            Some(S_IFLNK) => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(|error| tree.corrupt(error))?;
                if target.len() as u64 > MAX_TARGET {
                    return Err(tree.corrupt(io::Error::other(format!(
                        "symlink entry {:?} has a target longer than {MAX_TARGET} bytes",
                        path.name
                    ))));
                }
                tree.symlink(&path, &target)?;
            }
            Some(kind) => {
                return Err(UnpackError::UnsupportedEntry {
                    entry: path.name,
                    kind: match kind {
                        S_IFCHR => "character device",
                        S_IFBLK => "block device",
                        S_IFIFO => "fifo",
                        S_IFSOCK => "socket",
                        _ => "zip entry of an unknown file type",
                    },
                });
            }
        }
    }
    Ok(())
}

/// The entry's modification time: from the extended timestamp field (Unix time) when
/// the writer added one, or else the DOS time every entry has, taken as UTC since it
/// does not say its time zone.
fn mtime<R: Read>(file: &ZipFile<'_, R>) -> Option<SystemTime> {
    let unix = file.extra_data_fields().find_map(|field| match field {
        zip::ExtraField::ExtendedTimestamp(timestamp) => timestamp.mod_time(),
        _ => None,
    });
    let secs = match unix {
        Some(secs) => u64::from(secs),
        None => {
            let dos = file.last_modified()?;
            let days = days_from_civil(dos.year().into(), dos.month().into(), dos.day().into());
            let secs = days * 86_400
                + i64::from(dos.hour()) * 3600
                + i64::from(dos.minute()) * 60
                + i64::from(dos.second());
            u64::try_from(secs).ok()?
        }
    };
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::days_from_civil;

    #[test]
    fn days_from_civil_counts_from_the_unix_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1980, 1, 1), 3652);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
