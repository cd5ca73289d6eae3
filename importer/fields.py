"""Blueshift's customer-field vocabulary, shared by mapping and cleaning.

Owns: the names of the standard fields and the header spellings that mean
them, the identifiers, the flat pair of columns that builds a subscription
group, and the types a custom attribute may have. Plain constants only.

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
    "phone_number": ("phone_number", "phone", "phonenumber", "phone_1", "phone1", "tel")
    + ("mobile", "mobile_number", "mobile_phone", "cell", "cell_phone", "telephone"),
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

#: Types a custom attribute may have, declared in a mapping file or inferred.
COLUMN_TYPES = ("int", "float", "bool", "date", "string")
