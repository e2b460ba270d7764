//! `flotctl cat`: a unit file exactly as stored.

use std::io::Write;

use super::{NamesArgs, View, resolve};
use crate::store::Store;

/// `flotctl cat`
pub async fn cat(store: &Store, args: &NamesArgs) -> anyhow::Result<()> {
    let view = View::read(store).await?;
    let (names, instances) = resolve(&view, &args.units)?;
    let mut out = std::io::stdout().lock();
    for (index, name) in names.iter().enumerate() {
        let text = match view.units.get(name) {
            Some(unit) => &unit.text,
            // An instance not yet in the cluster shows the file it would be made from.
            None => {
                &instances
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("resolved")
                    .1
            }
        };
        if index > 0 {
            writeln!(out)?;
        }
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}
