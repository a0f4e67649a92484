package orderflow.bench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.avro.Schema;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/** The entry point: runs job B1 or B3 on Kafka Streams until SIGTERM, or creates topics, or runs the self-test. */
public final class Main {
    private static final String NAME = "orderflow-kstreams-bench";
    /** How long a SIGTERM waits for KafkaStreams.close (commit, flush, state checkpoint). */
    private static final Duration CLOSE_TIMEOUT = Duration.ofSeconds(60);

    private Main() {}

    /** Parses the command line and runs the chosen mode; see {@link Options#USAGE}. */
    public static void main(String[] args) {
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println(NAME + ": " + e.getMessage());
            System.err.println(Options.USAGE);
            System.exit(2);
            return;
        }
        try {
            switch (options.mode) {
                case SELF_TEST -> System.exit(SelfTest.run() ? 0 : 1);
                case CREATE_TOPICS -> createTopics(options);
                case RUN -> run(options);
                default -> throw new IllegalStateException("unknown mode " + options.mode);
            }
        } catch (Exception e) {
            System.err.println(NAME + ": fatal: " + e);
            e.printStackTrace(System.err);
            System.exit(1);
        }
    }

    /** The Kafka Streams configuration: the engine's defaults but for what the benchmark fixes. */
    static Properties streamsConfig(Options o) {
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, o.appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, o.bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, o.processingGuarantee);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, o.threads);
        props.put(StreamsConfig.STATE_DIR_CONFIG, o.stateDir.toString());
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // Kafka Streams' own default, stated because the benchmark relies on it.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return props;
    }

    private static Schema schemaOf(Options o, String topic) throws IOException {
        return new Schema.Parser().parse(schemaText(o, topic));
    }

    private static String schemaText(Options o, String topic) throws IOException {
        return Files.readString(o.schemas.resolve(Topics.schemaFile(topic)), StandardCharsets.UTF_8);
    }

    /** The output topic's serde, its schema file registered under {@code <topic>-value}. */
    private static RegistryAvroSerde output(Options o, SchemaRegistryClient registry, String topic) throws IOException {
        String text = schemaText(o, topic);
        int id = registry.register(topic + "-value", text);
        return RegistryAvroSerde.forOutput(registry, new Schema.Parser().parse(text), id);
    }

    private static Topology topology(Options o) throws IOException {
        SchemaRegistryClient registry = new SchemaRegistryClient(o.registry);
        return switch (o.job) {
            case B1 -> BuyerRelationsTopology.build(
                    RegistryAvroSerde.forInput(registry, schemaOf(o, Topics.ORDERS_EVENTS)),
                    output(o, registry, Topics.AUTH_RELATIONS));
            case B3 -> OrderSagaTopology.build(
                    RegistryAvroSerde.forInput(registry, schemaOf(o, Topics.ORDERS_COMMANDS)),
                    RegistryAvroSerde.forInput(registry, schemaOf(o, Topics.PAYMENTS_RESULTS)),
                    RegistryAvroSerde.forInput(registry, schemaOf(o, Topics.AUTH_USERS)),
                    output(o, registry, Topics.ORDERS_EVENTS),
                    output(o, registry, Topics.PAYMENTS_REQUESTS));
        };
    }

    /**
     * Runs the job until SIGTERM/SIGINT (exit 0 once KafkaStreams closed cleanly) or until
     * Kafka Streams fails (exit 1 with the reason).
     */
    private static void run(Options o) throws IOException, InterruptedException {
        Topology topology = topology(o);
        Properties props = streamsConfig(o);
        long commitInterval = new StreamsConfig(props).getLong(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG);
        KafkaStreams streams = new KafkaStreams(topology, props);
        AtomicReference<Throwable> fatal = new AtomicReference<>();
        AtomicBoolean announced = new AtomicBoolean();
        CountDownLatch failed = new CountDownLatch(1);
        streams.setUncaughtExceptionHandler(e -> {
            fatal.compareAndSet(null, e);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((next, previous) -> {
            if (next == KafkaStreams.State.RUNNING && announced.compareAndSet(false, true)) {
                System.out.printf("%s RUNNING job=%s guarantee=%s threads=%d commit.interval.ms=%d app-id=%s%n",
                        NAME, o.job.name().toLowerCase(), o.processingGuarantee, o.threads, commitInterval, o.appId);
                System.out.flush();
            }
            if (next == KafkaStreams.State.ERROR) {
                failed.countDown();
            }
        });
        // The JVM's exit status after SIGTERM is 143 whatever the hooks do; the harness wants
        // 0 for a clean stop, so the hook ends the process itself once the close is done.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            boolean closed = streams.close(CLOSE_TIMEOUT);
            if (!closed) {
                System.err.println(NAME + ": KafkaStreams did not close within " + CLOSE_TIMEOUT);
            }
            System.out.flush();
            System.err.flush();
            Runtime.getRuntime().halt(closed && fatal.get() == null ? 0 : 1);
        }, NAME + "-shutdown"));
        streams.start();
        failed.await();
        Throwable reason = fatal.get();
        System.err.println(NAME + ": fatal: Kafka Streams stopped in ERROR: " + (reason == null ? "(no exception)" : reason));
        if (reason != null) {
            reason.printStackTrace(System.err);
        }
        System.exit(1);
    }

    /** Creates the topics that do not exist yet, with the given partitions and replication factor 1. */
    private static void createTopics(Options o) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, o.bootstrap);
        try (Admin admin = Admin.create(props)) {
            Set<String> existing = admin.listTopics().names().get();
            List<NewTopic> missing = new ArrayList<>();
            for (String topic : o.topicsToCreate) {
                if (!existing.contains(topic)) {
                    missing.add(new NewTopic(topic, o.partitions, (short) 1));
                }
            }
            admin.createTopics(missing).all().get();
            for (NewTopic t : missing) {
                System.out.println("created " + t.name() + " (" + o.partitions + " partitions)");
            }
        }
    }
}
