"""Keep a Firestore copy of Clerk users, fed by Clerk's Svix-signed webhooks."""
