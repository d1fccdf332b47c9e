"""Citizen pages speak French first, English too. The language comes from ``?lang=``, then the
``lang`` cookie, then Accept-Language; French otherwise."""

from __future__ import annotations

from fastapi import Request

LANGUAGES = ("fr", "en")

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Carte d’identité numérique de Nice",
        "lead": "Connectez-vous une fois, avec FranceConnect, aux services de la Métropole et de ses partenaires. Chaque service ne voit qu’un pseudonyme.",
        "fc_signin_prefix": "S’identifier avec",
        "fc_what": "Qu’est-ce que FranceConnect ?",
        "fc_what_title": "Qu’est-ce que FranceConnect ? - nouvelle fenêtre",
        "signed_in": "Vous êtes connecté·e",
        "signed_in_since": "Connecté·e depuis",
        "level": "Niveau de garantie",
        "your_data": "Ce que FranceConnect nous a transmis (gardé le temps de la session seulement)",
        "logout": "Se déconnecter",
        "logged_out": "Vous êtes déconnecté·e.",
        "back_home": "Retour à l’accueil",
        "error_title": "La connexion n’a pas abouti",
        "error_cancelled": "Vous avez annulé la connexion avec FranceConnect, ou FranceConnect l’a refusée. Vous pouvez réessayer.",
        "error_expired": "Cette tentative de connexion a expiré ou a déjà servi. Recommencez depuis l’accueil.",
        "error_unavailable": "FranceConnect ne répond pas pour le moment. Réessayez dans quelques minutes.",
        "error_rejected": "La réponse de FranceConnect n’a pas pu être vérifiée. Par sécurité, la connexion est refusée.",
        "error_signin_failed": "La connexion n’a pas abouti. Réessayez.",
        "error_logout_state": "Cette déconnexion ne correspond à aucune demande de ce navigateur.",
        "reference": "Référence à communiquer au support",
        "retry": "Réessayer",
        "consents_title": "Les services auxquels vous avez donné accès",
        "consents_none": "Aucun service pour le moment.",
        "consents_revoke": "Retirer l’accès",
        "consent_title": "%s souhaite accéder à votre compte",
        "consent_lead": "Si vous acceptez, ce service recevra :",
        "consent_pseudonym": "un identifiant propre à ce service (un pseudonyme : il ne permet pas de vous reconnaître ailleurs)",
        "consent_scope": "l’accès",
        "consent_allow": "Accepter",
        "consent_deny": "Refuser",
        "claim_given_name": "vos prénoms",
        "claim_family_name": "votre nom de naissance",
        "claim_preferred_username": "votre nom d’usage",
        "claim_gender": "votre sexe",
        "claim_birthdate": "votre date de naissance",
        "claim_email": "votre adresse électronique",
        "claim_birthplace": "votre lieu de naissance",
        "claim_birthcountry": "votre pays de naissance",
        "claim_age_over_18": "si vous avez 18 ans ou plus (sans votre date de naissance)",
        "claim_age_bracket": "votre tranche d’âge (sans votre date de naissance)",
        "other_language": "English",
    },
    "en": {
        "title": "Nice Identity Card",
        "lead": "Sign in once, with FranceConnect, to the services of the Métropole and its partners. Each service sees only a pseudonym.",
        "fc_signin_prefix": "Sign in with",
        "fc_what": "What is FranceConnect?",
        "fc_what_title": "What is FranceConnect? - new window",
        "signed_in": "You are signed in",
        "signed_in_since": "Signed in since",
        "level": "Assurance level",
        "your_data": "What FranceConnect sent us (kept for this session only)",
        "logout": "Sign out",
        "logged_out": "You are signed out.",
        "back_home": "Back to the home page",
        "error_title": "Sign-in did not complete",
        "error_cancelled": "You cancelled the FranceConnect sign-in, or FranceConnect refused it. You can try again.",
        "error_expired": "This sign-in attempt expired or was already used. Start again from the home page.",
        "error_unavailable": "FranceConnect is not answering right now. Try again in a few minutes.",
        "error_rejected": "FranceConnect's answer could not be verified. For your safety, sign-in is refused.",
        "error_signin_failed": "Sign-in did not complete. Try again.",
        "error_logout_state": "This sign-out does not match any request from this browser.",
        "reference": "Reference for support",
        "retry": "Try again",
        "consents_title": "The services you have given access to",
        "consents_none": "No service yet.",
        "consents_revoke": "Withdraw access",
        "consent_title": "%s would like to access your account",
        "consent_lead": "If you accept, this service will receive:",
        "consent_pseudonym": "an identifier for this service only (a pseudonym: it cannot recognise you elsewhere)",
        "consent_scope": "access to",
        "consent_allow": "Accept",
        "consent_deny": "Refuse",
        "claim_given_name": "your given names",
        "claim_family_name": "your birth name",
        "claim_preferred_username": "your usage name",
        "claim_gender": "your gender",
        "claim_birthdate": "your date of birth",
        "claim_email": "your email address",
        "claim_birthplace": "your place of birth",
        "claim_birthcountry": "your country of birth",
        "claim_age_over_18": "whether you are 18 or over (not your date of birth)",
        "claim_age_bracket": "your age bracket (not your date of birth)",
        "other_language": "Français",
    },
}


def language(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get("lang")
    if asked in LANGUAGES:
        return asked
    accept = request.headers.get("accept-language", "").lower()
    return "en" if accept.startswith("en") else "fr"
