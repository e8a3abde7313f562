"""An SMTP server for the workspace's tests, on aiosmtpd.

Listens on 127.0.0.1:PORT and saves every message it accepts in DIR as
NNNNN.eml (the bytes received), next to NNNNN.json (the envelope: mail_from,
rcpt_tos, whether the session was encrypted, the AUTH login). The .json file is
written first and each file appears whole (written aside, then renamed), so a
reader that sees the .eml sees both complete.

Options:
  --cert FILE --key FILE   offer STARTTLS with this certificate, and require it
  --implicit-tls           TLS from the first byte instead (needs --cert, --key)
  --auth USER:PASSWORD     require AUTH (PLAIN or LOGIN) with these credentials

Started by testbed::smtp::SmtpServer; runs until it is killed.
"""

import argparse
import itertools
import json
import os
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class SaveToDirectory:
    def __init__(self, directory, implicit_tls):
        self.directory = directory
        self.implicit_tls = implicit_tls
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    def write(self, path, data):
        with open(path + ".part", "wb") as file:
            file.write(data)
        os.rename(path + ".part", path)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            number = next(self.numbers)
        base = os.path.join(self.directory, "%05d" % number)
        login = getattr(session, "login_data", None)
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        envelope_data = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "tls": self.implicit_tls or session.ssl is not None,
            "login": login,
        }
        self.write(base + ".json", json.dumps(envelope_data).encode())
        self.write(base + ".eml", envelope.original_content or envelope.content)
        return "250 OK"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--auth")
    args = parser.parse_args()

    options = {}
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    if tls and args.implicit_tls:
        options["ssl_context"] = tls
    elif tls:
        options["tls_context"] = tls
        options["require_starttls"] = True
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == user.encode()
                and auth_data.password == password.encode()
            )
            # handled=False: aiosmtpd answers a failure with 535 itself
            # (the default, True, leaves the client waiting for an answer).
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        options["authenticator"] = authenticator
        options["auth_required"] = True
        # aiosmtpd only counts STARTTLS as encryption; implicit TLS is too.
        options["auth_require_tls"] = not args.implicit_tls

    handler = SaveToDirectory(args.dir, args.implicit_tls)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print("smtp_server: listening on 127.0.0.1:%d" % args.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
