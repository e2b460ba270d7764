//! `flotctl verify`: every check submit makes, offline.

use anyhow::bail;

use super::{Copies, VerifyArgs, read_unit_file};

/// `flotctl verify`
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut copies = Copies::default();
    for path in &args.files {
        match read_unit_file(path).and_then(|file| copies.check(path, file)) {
            Ok(file) => outln!("{path}: ok ({})", file.name),
            Err(error) => {
                eprintln!("{error:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} unit files failed verification", args.files.len());
    }
    Ok(())
}
