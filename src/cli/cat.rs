//! `flotctl cat`: a unit file exactly as stored.

use std::io::Write;

use super::{NamesArgs, View, existing};
use crate::store::Store;

/// `flotctl cat`
pub async fn cat(store: &Store, args: &NamesArgs) -> anyhow::Result<()> {
    let view = View::read(store).await?;
    let names = existing(&view, &args.units)?;
    let mut out = std::io::stdout().lock();
    for (index, name) in names.iter().enumerate() {
        if index > 0 {
            writeln!(out)?;
        }
        // As systemctl cat does, several files are told apart by a comment line naming each.
        if names.len() > 1 {
            writeln!(out, "# {name}")?;
        }
        out.write_all(view.units[name].text.as_bytes())?;
    }
    Ok(())
}
