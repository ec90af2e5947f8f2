//! Validated value types. Each can only hold a valid value, and none prints a secret through
//! `Debug` or `Display`: a phone number prints masked, ID characters print as stars.

mod app_id;
mod id_last_six;
mod natural;
mod phone;

pub use app_id::{AppId, InvalidAppId};
pub use id_last_six::{IdLastSix, InvalidIdLastSix};
pub use natural::natural_cmp;
pub use phone::{E164, InvalidPhoneNumber, is_e164_shaped, mask_digits};
