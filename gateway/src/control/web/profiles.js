// The page's profiles: each user's display name, about line and avatar, read with
// `GET /v1/users/{id}/profile` when a contact or group member first shows (and again on
// every connection, since `profile_changed` is not stored while the page is away), kept up
// to date by `profile_changed`, and the user's own changed with `PUT /v1/users/{me}/profile`.
// They are kept in localStorage (bounded) so that names show at once after a reload.

const PROFILES_MAX = 1000; // users whose profile is kept, the oldest read dropped first
export const NAME_CHARS_MAX = 64;
export const ABOUT_CHARS_MAX = 140;

export class Profiles {
  /** `api(method, path, body)` is the client's authenticated JSON call; `onChange()` is
   * called after a profile changed. */
  constructor({ api, prefix, onChange }) {
    this.api = api;
    this.key = prefix + "profiles";
    this.onChange = onChange;
    this.loading = new Set();
    try {
      this.byUser = new Map(Object.entries(JSON.parse(localStorage.getItem(this.key)) ?? {}));
    } catch {
      this.byUser = new Map();
    }
  }

  save() {
    localStorage.setItem(this.key, JSON.stringify(Object.fromEntries(this.byUser)));
  }

  /** `{display_name, about, avatar}` of `user`, or undefined when not read yet. */
  get(user) {
    return this.byUser.get(user);
  }

  /** The name to show: the display name, or the user id when there is none. */
  name(user) {
    const name = this.byUser.get(user)?.display_name;
    return name ? name : user;
  }

  avatar(user) {
    return this.byUser.get(user)?.avatar ?? null;
  }

  set(profile) {
    const user = profile.user;
    if (typeof user !== "string") return;
    const kept = {
      display_name: String(profile.display_name ?? ""),
      about: String(profile.about ?? ""),
      avatar: typeof profile.avatar === "string" ? profile.avatar : null,
    };
    const old = this.byUser.get(user);
    this.byUser.delete(user);
    this.byUser.set(user, kept);
    while (this.byUser.size > PROFILES_MAX) this.byUser.delete(this.byUser.keys().next().value);
    this.save();
    if (JSON.stringify(old) !== JSON.stringify(kept)) this.onChange();
  }

  /** Reads the profiles of `users` (those not read yet, or all when `again`). */
  load(users, again = false) {
    for (const user of [...users].slice(0, PROFILES_MAX)) {
      if (this.loading.has(user) || (!again && this.byUser.has(user))) continue;
      this.loading.add(user);
      this.api("GET", `/v1/users/${encodeURIComponent(user)}/profile`)
        .then((profile) => this.set(profile))
        .catch(() => {
          // Shown by user id; asked again on the next connection.
        })
        .finally(() => this.loading.delete(user));
    }
  }

  /** Changes the user's own profile: the fields given (`avatar` a hash they uploaded, or
   * null to remove it). Resolves with the profile as the server stored it. */
  async update(me, fields) {
    const profile = await this.api("PUT", `/v1/users/${encodeURIComponent(me)}/profile`, fields);
    this.set(profile);
    return profile;
  }

  /** A `profile_changed` from the server. */
  changed(message) {
    this.set(message);
  }
}
