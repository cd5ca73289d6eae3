"""Blueshift's customer-field vocabulary, shared by mapping and cleaning.

Owns: the names of the standard fields and the header spellings that mean
them, the identifiers, the flat pair of columns that builds a subscription
group, the headers of a country column that phones are read in, and the
types a custom attribute may have. Plain constants only.

Must not: match headers or clean values (that is :mod:`importer.mapping`
and :mod:`importer.cleaning`).
"""

from __future__ import annotations

#: The fields that identify a customer, in the order a reject names them.
IDENTIFIERS = ("email", "customer_id")

#: The flat pair that builds one ``subscription_groups`` entry per row.
GROUP_ID, GROUP_SUBSCRIBED = "subscription_group_id", "subscription_group_subscribed"

#: Blueshift's standard customer fields (each with a fixed rule, never type-inferred)
#: and the header spellings that mean them, compared after header folding.
STANDARD_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e_mail", "email_address", "mail", "emailaddress"),
    "customer_id": ("customer_id", "customerid", "cust_id", "user_id", "userid", "external_id"),
    # In order of preference when several columns match: mobile first.
    "phone_number": ("mobile", "mobile_phone", "mobile_number", "mobile_phone_number", "cell")
    + ("cell_phone", "cellphone", "sms", "phone_number", "phone", "phonenumber", "telephone")
    + ("tel", "phone_1", "phone1", "billing_phone", "default_address_phone", "phone_2")
    + ("phone2", "home_phone", "work_phone", "business_phone", "other_phone"),
    "firstname": ("firstname", "first_name", "given_name", "givenname", "forename", "fname"),
    "lastname": ("lastname", "last_name", "surname", "family_name", "familyname", "lname"),
    "gender": ("gender", "sex"),
    "joined_at": ("joined_at", "joined", "signup_date", "signed_up_at", "created_at", "join_date"),
    "unsubscribed": ("unsubscribed", "is_unsubscribed", "opted_out", "unsubscribe"),
    "unsubscribed_at": ("unsubscribed_at", "unsubscribe_date"),
    "subscription_groups": ("subscription_groups", "subscriptions"),
    GROUP_ID: (GROUP_ID,),
    GROUP_SUBSCRIBED: (GROUP_SUBSCRIBED,),
}

#: Headers of the column whose country national phone numbers are read in,
#: in order of preference, compared after header folding.
PHONE_COUNTRY_HEADERS = ("country_code", "cc", "default_address_country_code", "country") + (
    "country_region",
    "mailing_country",
    "billing_country",
    "address_country",
)

#: Types a custom attribute may have, declared in a mapping file or inferred
#: (all but ``phone``, which a phone column that is not ``phone_number`` gets).
COLUMN_TYPES = ("int", "float", "bool", "date", "string", "phone")
