package orderflow.bench;

/** The topic names of the two jobs (DESIGN.md's), and where their schema files are. */
final class Topics {
    static final String ORDERS_EVENTS = "orders.events";
    static final String AUTH_RELATIONS = "auth.relations";
    static final String ORDERS_COMMANDS = "orders.commands";
    static final String PAYMENTS_RESULTS = "payments.results";
    static final String PAYMENTS_REQUESTS = "payments.requests";
    static final String AUTH_USERS = "auth.users";

    private Topics() {}

    /** The schema file of {@code topic} in the repo's schemas/ layout. */
    static String schemaFile(String topic) {
        return topic + ".avsc";
    }
}
