//! Parts of a `[[network]]` entry that VM and container files share.

use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, MacAddr};
use super::error::{ConfigError, Location};
use super::span::Src;

/// `id`: 1-15 characters of letters, digits, '_' and '-'; default `eth<index>`.
pub(crate) fn nic_id(
    src: &Src,
    index: usize,
    raw: Option<&Spanned<String>>,
    errors: &mut Vec<ConfigError>,
) -> String {
    let Some(id) = raw else {
        return format!("eth{index}");
    };
    let v = id.get_ref();
    let ok = !v.is_empty()
        && v.len() <= 15
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        errors.push(src.invalid(
            &format!("network[{index}].id"),
            id.span(),
            format!("{v:?} must be 1-15 characters of letters, digits, '_' and '-'"),
        ));
    }
    v.clone()
}

/// `mac`: a unicast address, or the stable one derived from `uuid` and the NIC id. Returns
/// the MAC, whether it was written in the file, and where.
pub(crate) fn nic_mac(
    src: &Src,
    index: usize,
    raw: Option<&Spanned<String>>,
    uuid: &Uuid,
    id: &str,
    errors: &mut Vec<ConfigError>,
) -> (MacAddr, bool, Option<Location>) {
    let Some(m) = raw else {
        return (derive::nic_mac(uuid, id, 0), false, None);
    };
    let field = format!("network[{index}].mac");
    let at = Some(src.at(m.span().start));
    let mac = match m.get_ref().parse::<MacAddr>() {
        Ok(mac) if mac.is_multicast() || mac.is_zero() => {
            errors.push(src.invalid(&field, m.span(), format!("{mac} is not a unicast address")));
            mac
        }
        Ok(mac) => mac,
        Err(e) => {
            errors.push(src.invalid(&field, m.span(), e));
            derive::nic_mac(uuid, id, 0)
        }
    };
    (mac, true, at)
}
